// Greedy continuation of token-id prompts with llama.cpp (npm node-llama-cpp, prebuilt CPU binary; nothing is
// compiled or downloaded): what `ftcompare export` uses to check that a GGUF runs the same in llama.cpp.
//   node scripts/llama_greedy.mjs MODEL.gguf N_TOKENS < prompts.json   (prompts.json: [[id, ...], ...])
// Prints {"outputs": [[id, ...], ...]} on stdout: N_TOKENS greedy tokens per prompt (fewer if it ends with EOS).
import {getLlama} from "node-llama-cpp";

const [gguf, nArg] = process.argv.slice(2);
const n = Number(nArg);
const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const prompts = JSON.parse(Buffer.concat(chunks).toString("utf8"));

const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath: gguf});
const longest = Math.max(...prompts.map(p => p.length));
const context = await model.createContext({contextSize: Math.max(64, longest + n + 8), sequences: 1, threads: 1});
const sequence = context.getSequence();
const outputs = [];
for (const prompt of prompts) {
    await sequence.clearHistory();
    const out = [];
    for await (const token of sequence.evaluate(prompt, {temperature: 0})) {
        out.push(token);
        if (token === model.tokens.eos || out.length >= n) break;  // like transformers' generate: EOS included
    }
    outputs.push(out);
}
process.stdout.write(JSON.stringify({outputs}) + "\n");
await context.dispose();
await model.dispose();
