"""The source recipe's joint training step (../shared/seeds/000_*, `train_one_epoch`):
HF transformers + PEFT, six LoRA experts switched with set_adapter, the encoder once for the
gate's pooled input, then one full model pass per expert (soft) or per expert present at each
top-k rank; AdamW over adapters and gate. Batch of 4 utterances, k = 2, fp32 on CPU, same
threads as `cargo bench --bench training`. Prints utterances per second per phase.

    .venv-hf/bin/python scripts/bench_recipe_joint.py ../shared/models/whisper-tiny.en [threads]
    LORA_TARGETS='.*(encoder\.layers\.3|decoder).*\.(q_proj|v_proj)' .venv-hf/bin/python scripts/bench_recipe_joint.py ...
"""
import os
import sys
import time

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

model_dir = sys.argv[1]
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
torch.set_num_threads(threads)
torch.manual_seed(0)
E, K, B = 6, 2, 4
base = WhisperForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32)
embedding_model = WhisperForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32).model.eval()
fe = WhisperFeatureExtractor.from_pretrained(model_dir)
tok = WhisperTokenizer.from_pretrained(model_dir)
# LORA_TARGETS: the same regex as `cargo bench --bench training` (default: decoder q/v).
targets = os.environ.get("LORA_TARGETS", r".*decoder.*\.(q_proj|v_proj)")
cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets)
model = get_peft_model(base, cfg, adapter_name="expert_0")
for e in range(1, E):
    model.add_adapter(f"expert_{e}", cfg)
gate = torch.nn.Sequential(torch.nn.Linear(384, 256), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(256, E))
text = " and he laid his hands on them and departed thence into the city"
ids = [50257, 50362] + tok.encode(text, add_special_tokens=False) + [50256]
labels = torch.tensor([ids[1:]] * B)
dec_in = torch.tensor([ids[:-1]] * B)
clips = [(np.sin(np.arange(64_000) * (i + 2) * 0.01) * 0.2).astype(np.float32) for i in range(B)]
feats = fe(clips, sampling_rate=16_000, return_tensors="pt").input_features
params = [p for p in model.parameters() if p.requires_grad] + list(gate.parameters())
opt = torch.optim.AdamW(params, lr=1e-4)


def seq_loss(logits, labels):
    lp = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    return lp.mean(dim=1)


def step(mode):
    opt.zero_grad()
    with torch.no_grad():
        pooled = embedding_model.encoder(feats).last_hidden_state.mean(dim=1)
    probs = torch.softmax(gate(pooled) / 1.0, dim=-1)
    loss = torch.zeros(B)
    if mode == "soft":
        for e in range(E):
            model.set_adapter(f"expert_{e}")
            out = model(input_features=feats, decoder_input_ids=dec_in)
            loss = loss + probs[:, e] * seq_loss(out.logits, labels)
    else:
        v, idx = torch.topk(probs, K, dim=-1)
        w = v / v.sum(dim=-1, keepdim=True)
        for rank in range(K):
            for e in torch.unique(idx[:, rank]).tolist():
                model.set_adapter(f"expert_{e}")
                mask = idx[:, rank] == e
                out = model(input_features=feats[mask], decoder_input_ids=dec_in[mask])
                loss[mask] = loss[mask] + w[mask, rank] * seq_loss(out.logits, labels[mask])
    loss.mean().backward()
    opt.step()


model.train()
print(f"torch {torch.__version__}, threads {threads}, {E} experts, k {K}, batch {B}, LoRA on {targets}")
for mode in ["soft", "topk_soft", "topk_hard"]:
    step(mode)
    reps = 2
    t = time.perf_counter()
    for _ in range(reps):
        step(mode)
    s = (time.perf_counter() - t) / reps
    print(f"recipe {mode:<9}: {s:.2f} s per step of {B} utterances = {B / s:.2f} utterances/s")
