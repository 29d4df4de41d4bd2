// Greedy completions in llama.cpp, through the npm package node-llama-cpp (its prebuilt libllama is
// llama.cpp itself). Driven by loratune/export/llama_runtime.py: one JSON request on stdin, one JSON
// reply on stdout. Usage: node llama_driver.mjs RUNTIME_DIR < request.json
//
// request: {model, lora (path or null), prompts: [text], max_tokens, threads, context_size}
// reply:   {completions: [{prompt_tokens: [id], tokens: [id], text, seconds (prompt and answer)}]}
import path from "node:path";
import {pathToFileURL} from "node:url";

const runtimeDir = process.argv[2];
// An ES module resolves packages from its own folder only (NODE_PATH is not read for `import`), so
// the runtime's copy is imported by path.
const entry = path.join(runtimeDir, "node_modules", "node-llama-cpp", "dist", "index.js");
const {getLlama, LlamaLogLevel} = await import(pathToFileURL(entry).href);

// Any failure ends the process with one line on stderr (the last line is what Python reports).
process.on("unhandledRejection", (error) => {
    process.stderr.write(`\n${error?.message ?? error}\n`);
    process.exit(1);
});

let input = "";
for await (const chunk of process.stdin) input += chunk;
const request = JSON.parse(input);

// build: "never" and gpu: false: the prebuilt CPU binary or an error, never a source build or a GPU probe.
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false});
const model = await llama.loadModel({modelPath: request.model, gpuLayers: 0});
const context = await model.createContext({
    contextSize: request.context_size,
    threads: {ideal: request.threads, min: request.threads},
    lora: request.lora ? {adapters: [{filePath: request.lora}]} : undefined,
});
const sequence = context.getSequence();
const completions = [];
for (const prompt of request.prompts) {
    await sequence.clearHistory();
    // Special tokens in the text (a chat template's markers) are parsed as such, as Ollama and
    // llama-cli do; BOS is prepended when the GGUF says so (tokenizer.ggml.add_bos_token) and the
    // text does not already start with it (as loratune encodes prompts).
    const promptTokens = model.tokenize(prompt, true);
    const bos = model.tokens.bos;
    if (model.tokens.shouldPrependBosToken && bos != null && promptTokens[0] !== bos) promptTokens.unshift(bos);
    const tokens = [];
    const started = performance.now();
    if (promptTokens.length < request.context_size) {
        for await (const token of sequence.evaluate(promptTokens, {temperature: 0})) {
            if (model.isEogToken(token)) break;
            tokens.push(token);
            if (tokens.length >= request.max_tokens || promptTokens.length + tokens.length >= request.context_size) break;
        }
    }
    const seconds = (performance.now() - started) / 1000;
    completions.push({prompt_tokens: promptTokens, tokens, text: model.detokenize(tokens), seconds});
}
process.stdout.write(JSON.stringify({completions}));
await context.dispose();
await model.dispose();
await llama.dispose();
