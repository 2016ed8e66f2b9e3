"""The Hugging Face transformers side of `cargo bench --bench whisper`: encoder 30-s windows
per second at batch 1 and 8, greedy decoding tokens per second, fp32 on CPU, same thread count.

    python3 -m venv .venv-hf && .venv-hf/bin/pip install torch transformers
    .venv-hf/bin/python scripts/bench_hf_whisper.py ../shared/models/whisper-tiny.en [threads]
"""
import sys
import time

import numpy as np
import torch
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

model_dir = sys.argv[1]
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
torch.set_num_threads(threads)
model = WhisperForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="sdpa").eval()
fe = WhisperFeatureExtractor.from_pretrained(model_dir)
i = np.arange(64_000, dtype=np.float32)
clip = ((np.sin(i * 0.031) + np.sin(i * 0.0071)) * 0.2).astype(np.float32)
t = time.perf_counter()
feats = fe(clip, sampling_rate=16_000, return_tensors="pt").input_features
print(f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, threads {threads}")
print(f"log-mel: {(time.perf_counter() - t) * 1e3:.1f} ms per clip")
flops = 36.9e9
with torch.inference_mode():
    for batch in (1, 8):
        x = feats.repeat(batch, 1, 1)
        model.model.encoder(x)
        reps = 6 if batch == 1 else 2
        t = time.perf_counter()
        for _ in range(reps):
            model.model.encoder(x)
        s = (time.perf_counter() - t) / (reps * batch)
        print(f"encoder batch {batch}: {s:.3f} s per window, {1 / s:.2f} windows/s, {flops / s / 1e9:.1f} GFLOP/s")
    for batch in (1, 8):
        x = feats.repeat(batch, 1, 1)
        gen = model.generation_config
        t = time.perf_counter()
        out = model.generate(x, max_new_tokens=64, min_new_tokens=64, num_beams=1, do_sample=False)
        s = time.perf_counter() - t
        n = (out.shape[1] - 2) * batch  # minus the prompt (the encoder pass is included, as in the Rust bench)
        print(f"greedy decoding batch {batch}: {n} tokens in {s:.2f} s, {n / s:.1f} tokens/s")
