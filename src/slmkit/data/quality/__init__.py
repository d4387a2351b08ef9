"""Data quality: statistics (`stats`), quality filters (`filters`), exact and near deduplication (`dedup`), eval
decontamination by 13-gram overlap (`decontam`), and the cleaner that runs them over a stream of documents
(`clean`). The eval tasks' texts are read by the engine (`slmkit.engine.contamination`) and passed down."""
