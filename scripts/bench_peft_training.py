"""The source recipe's side of `cargo bench --bench training`: HF transformers + PEFT LoRA
(r 16, alpha 32, the same target modules) on whisper-tiny.en, fp32 on CPU, the same thread
count and batch: one expert with batch 4, and four experts switched with set_adapter in a
Python loop (one forward per expert, as the source guide does), AdamW step included.

    python3 -m venv .venv-hf && .venv-hf/bin/pip install torch transformers peft
    .venv-hf/bin/python scripts/bench_peft_training.py ../shared/models/whisper-tiny.en [threads]
"""
import resource
import sys
import time

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

model_dir = sys.argv[1]
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
targets = sys.argv[3] if len(sys.argv) > 3 else r".*decoder.*\.(q_proj|v_proj)"
torch.set_num_threads(threads)
torch.manual_seed(0)
base = WhisperForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32)
fe = WhisperFeatureExtractor.from_pretrained(model_dir)
tok = WhisperTokenizer.from_pretrained(model_dir)
cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets)
model = get_peft_model(base, cfg, adapter_name="e0")
for e in range(1, 4):
    model.add_adapter(f"e{e}", cfg)
text = " and he laid his hands on them and departed thence into the city"
ids = [50257, 50362] + tok.encode(text, add_special_tokens=False) + [50256]
dec_in = torch.tensor([ids[:-1]] * 4)
labels = torch.tensor([ids[1:]] * 4)
clips = [(np.sin(np.arange(64_000) * (i + 2) * 0.01) * 0.2).astype(np.float32) for i in range(4)]
feats = fe(clips, sampling_rate=16_000, return_tensors="pt").input_features
print(f"torch {torch.__version__}, threads {threads}, LoRA r=16 on `{targets}`, {len(ids) - 1} tokens per row")


def step(adapters):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = step.opts.setdefault(tuple(adapters), torch.optim.AdamW(params, lr=1e-4))
    opt.zero_grad()
    loss = 0
    for a in adapters:
        model.set_adapter(a)
        out = model(input_features=feats, decoder_input_ids=dec_in, labels=labels)
        loss = loss + out.loss
    loss.backward()
    opt.step()


step.opts = {}
model.train()
for name, adapters in [("1 expert, batch 4", ["e0"]), ("4 experts switched (set_adapter), 4 utterances x 4 experts", ["e0", "e1", "e2", "e3"])]:
    step(adapters)
    reps = 3
    t = time.perf_counter()
    for _ in range(reps):
        step(adapters)
    s = (time.perf_counter() - t) / reps
    rows = 4 * len(adapters)
    print(f"{name}: {s:.3f} s per step ({rows} rows) = {rows / s:.1f} samples/s")
print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
