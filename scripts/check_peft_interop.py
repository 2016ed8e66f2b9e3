"""Adapters cross between whisper-moe and PEFT: an adapter written here loads with
PeftModel.from_pretrained on the HF model and gives the same logits on a fixture clip (within
1e-3), and an adapter written by PEFT loads here and matches likewise.
Run through scripts/check_peft_interop.sh."""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

pipeline, shared = sys.argv[1], Path(sys.argv[2])
model_dir = shared / "models/whisper-tiny.en"
clip = shared / "fixtures/whisper-tiny.en/pub_01.wav"
meta = json.loads((shared / "fixtures/whisper-tiny.en/pub_01.json").read_text())
ids = meta["decoder_input_ids"]
tmp = Path(tempfile.mkdtemp())
torch.manual_seed(0)

fe = WhisperFeatureExtractor.from_pretrained(model_dir)
audio = np.frombuffer(clip.read_bytes()[44:], dtype="<i2").astype(np.float32) / 32768.0
feats = fe(audio, sampling_rate=16_000, return_tensors="pt").input_features
dec = torch.tensor([ids])


def hf_logits(model):
    with torch.no_grad():
        return model(input_features=feats, decoder_input_ids=dec).logits[0].numpy()


def ours(adapter):
    out = tmp / "ours.f32"
    subprocess.run([pipeline, "logits", "--model", str(model_dir), "--adapter", str(adapter), "--audio", str(clip),
                    "--tokens", ",".join(map(str, ids)), "--out", str(out)], check=True)
    return np.fromfile(out, dtype="<f4").reshape(len(ids), -1)


base = WhisperForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
plain = hf_logits(base)
failures = []

# 1. An adapter written here, loaded by PEFT.
mine = tmp / "mine"
subprocess.run([pipeline, "lora-random", "--model", str(model_dir), "--out", str(mine), "--r", "8",
                "--targets", "q_proj,v_proj,fc1", "--seed", "3"], check=True)
peft_model = PeftModel.from_pretrained(base, mine).eval()
a, b = hf_logits(peft_model), ours(mine)
d1 = float(np.abs(a - b).max())
moved = float(np.abs(a - plain).max())
print(f"ours -> PEFT: max |diff| {d1:.2e} (the adapter moves the logits by up to {moved:.2f})")
if not (d1 <= 1e-3 and moved > 1e-2):
    failures.append("an adapter written here does not give the same logits in PEFT")

# 2. An adapter written by PEFT (non-zero B), loaded here.
base2 = WhisperForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32)
cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "out_proj"], init_lora_weights=False)
pm = get_peft_model(base2, cfg).eval()
theirs = tmp / "theirs"
pm.save_pretrained(theirs)
a, b = hf_logits(pm), ours(theirs)
d2 = float(np.abs(a - b).max())
moved = float(np.abs(a - plain).max())
print(f"PEFT -> ours: max |diff| {d2:.2e} (the adapter moves the logits by up to {moved:.2f})")
if not (d2 <= 1e-3 and moved > 1e-2):
    failures.append("an adapter written by PEFT does not give the same logits here")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("OK: adapters load both ways with the same logits (within 1e-3)")
