"""The quantization techniques, one module each, independent of the pipeline that runs them:

- flow.py: what every quantization flow does (QuantFlow), its settings, and `flow_for`;
  fx.py (torch.ao FX graph mode: fbgemm, qnnpack) and pt2e.py (torchao PT2E with the XNNPACK
  quantizer) implement it;
- calibrate.py: observers see calibration batches;  qat.py: fake-quant fine-tuning;
  distributed.py: the same fine-tuning on several processes (torchrun + DDP);
- dynamic.py: int8 weights, activations quantized at run time;
- prune.py: magnitude pruning before quantization;
- sensitivity.py: per-layer accuracy cost;  fallback.py: accuracy-aware float layers;
- float_layers.py: layers a flow cannot make int8 (they stay float);  mask_paths.py: the ops
  that carry an attention mask to a softmax (they stay float);  attention.py and
  recurrent.py: torch.nn's attention (FX flows) and LSTM (XNNPACK flow) rebuilt (rebuild.py)
  so that their matrix products can be int8;
- graph rewrites that mend a flow or a runtime on an exact equivalent: fx_scalars.py (floats
  from shapes become literals, a shape joined to a tuple one call of numbers), transposed_bn.py
  (batch norm folded into a transposed conv), max_pool.py (adaptive max pooling as the max pool
  it equals, for ExecuTorch), shared_conv_bn.py (a batch norm PT2E must not fold, as a scale and
  a shift);
- remake.py: a converted model made again in another process (a Ray task);
- training.py: the loop and distillation;  evaluate.py: logits in PyTorch (edgeship.metrics scores them).
"""
