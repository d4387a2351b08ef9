// node-llama-cpp (a prebuilt llama.cpp from npm) on a GGUF file: how it tokenizes a text and the greedy tokens it
// generates after given ids. Called by tests/test_gguf.py: node llama_cpp_greedy.mjs PACKAGE_ENTRY MODEL REQUEST
// where REQUEST is a JSON file {"text", "ids", "n"}; prints {"tokenized": [...], "greedy": [...]}.
import fs from "node:fs";
import {pathToFileURL} from "node:url";

const [entry, modelPath, requestPath] = process.argv.slice(2);
const {getLlama} = await import(pathToFileURL(entry).href);
const request = JSON.parse(fs.readFileSync(requestPath, "utf8"));
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath});
const context = await model.createContext({contextSize: 64, threads: 1});
const greedy = [];
for await (const token of context.getSequence().evaluate(request.ids, {temperature: 0})) {
  greedy.push(token);
  if (greedy.length >= request.n) break;
}
console.log(JSON.stringify({tokenized: Array.from(model.tokenize(request.text, false)), greedy}));
