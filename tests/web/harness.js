// Runs an rwkv_relax webgpu library in the page with tvmjs, the way web-llm drives MLC-LLM
// libraries, and mirrors rwkv_relax/runtime/model.py: every exported function takes
// (inputs..., rnn_state, params) with params one TVM Array in _metadata()["params"] order.
//
// window.runModel(cfg) -> {adapter, prefill: [V floats], decode: [[V floats], ...], ...}
//   cfg.wasm    URL of the .wasm
//   cfg.params  URL of the params folder (tensor-cache.json + shards), ending in "/"
//   cfg.prefix  the library's system-lib symbol prefix ("" for none)
//   cfg.prompt  token ids for prefill
//   cfg.decode  token ids fed one by one after the prompt
"use strict";

async function runModel(cfg) {
  const log = [];
  const t0 = performance.now();
  const wasm = await (await fetch(cfg.wasm)).arrayBuffer();
  const tvm = await tvmjs.instantiate(wasm, tvmjs.createPolyfillWASI(), (msg) => log.push(msg));
  const gpu = await tvmjs.detectGPUDevice();
  if (gpu === undefined) {
    throw new Error("no WebGPU adapter (is --enable-unsafe-webgpu set?)");
  }
  tvm.initWebGPU(gpu.device);
  const dev = tvm.webgpu();
  const int = (x) => new tvmjs.Scalar(x, "int64");
  const builtin = (name) => tvm.getGlobalFunc("vm.builtin." + name);

  tvm.beginScope();
  try {
    // wasm libraries are unprefixed system libs, so the standard loader finds the VM; a prefix
    // (for apps linking several models) selects that model's symbols instead
    const vm = cfg.prefix
      ? new tvmjs.VirtualMachine(
          tvm.getGlobalFunc("ffi.SystemLib")(cfg.prefix).getFunction("vm_load_executable")(), dev)
      : tvm.createVirtualMachine(dev);
    await tvm.asyncLoadWebGPUPipelines(vm.getInternalModule());
    const metadata = JSON.parse(vm.getFunction("_metadata")());
    const V = metadata.vocab_size;
    const tLoaded = performance.now();

    await tvm.fetchTensorCache(cfg.params, dev);
    const params = tvm.getParamsFromCacheByName(metadata.params.map((p) => p.name));

    const embed = vm.getFunction("embed");
    const prefill = vm.getFunction("prefill");
    const decode = vm.getFunction("decode");
    let rnn = vm.getFunction("create_rnn_state")(tvm.makeShapeTuple([1]), tvm.makeShapeTuple([4]));
    builtin("kv_state_add_sequence")(rnn, int(0));

    const logitsCPU = tvm.empty([V], "float32", tvm.cpu());
    // one forward: embed (T,) -> (T, C), view as (1, T, C), run fn inside begin/end_forward
    const step = async (fn, tokens) => {
      const ids = tvm.empty([tokens.length], "int32", dev);
      ids.copyFrom(new Int32Array(tokens));
      const emb = embed(ids, params);  // (T, C)
      const emb3 = emb.view([1, tokens.length, emb.shape[1]]);  // (1, T, C)
      builtin("kv_state_begin_forward")(rnn, tvm.makeShapeTuple([0]), tvm.makeShapeTuple([tokens.length]));
      const out = fn(emb3, rnn, params);  // (logits (1, 1, V), new state)
      builtin("kv_state_end_forward")(rnn);
      rnn = out.get(1);
      logitsCPU.copyFrom(out.get(0).view([V]));
      await dev.sync();
      return Array.from(logitsCPU.toArray());
    };

    const result = {adapter: {vendor: gpu.adapterInfo.vendor, architecture: gpu.adapterInfo.architecture},
                    vocab_size: V, n_params: metadata.params.length};
    const tRun = performance.now();
    result.prefill = await step(prefill, cfg.prompt);
    result.decode = [];
    for (const tok of cfg.decode) {
      result.decode.push(await step(decode, [tok]));
    }
    result.seconds = {load: (tLoaded - t0) / 1000, params: (tRun - tLoaded) / 1000,
                      run: (performance.now() - tRun) / 1000};
    result.log = log;
    return result;
  } finally {
    tvm.endScope();
  }
}
window.runModel = runModel;
