//! Adapters in PEFT's layout: one directory per expert holding `adapter_config.json` and
//! `adapter_model.safetensors` with PEFT's key names
//! (`base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight`, A as [r, d_in],
//! B as [d_out, r]), so `PeftModel.from_pretrained` loads them, and adapters PEFT wrote load here.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde_json::{Value, json};

use super::model::Whisper;
use crate::lora::{LoraConfig, MultiLora, Targets, trainable};

const PREFIX: &str = "base_model.model.";

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Write expert `e` of every adapter in `model` to `dir` in PEFT's layout.
pub fn save_expert(model: &Whisper, e: usize, cfg: &LoraConfig, base_model: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, lora) in model.loras() {
        let [_, d_in, r] = lora.a.dims();
        let d_out = lora.b.dims()[2];
        let a: Vec<f32> =
            lora.a.val().slice(s![e..e + 1, .., ..]).reshape([d_in, r]).transpose().into_data().try_into_vec_as()?;
        let b: Vec<f32> =
            lora.b.val().slice(s![e..e + 1, .., ..]).reshape([r, d_out]).transpose().into_data().try_into_vec_as()?;
        tensors.insert(format!("{PREFIX}{name}.lora_A.weight"), (vec![r, d_in], f32_bytes(&a)));
        tensors.insert(format!("{PREFIX}{name}.lora_B.weight"), (vec![d_out, r], f32_bytes(&b)));
    }
    if tensors.is_empty() {
        bail!("the model has no adapters to save");
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, (s, b))| {
            Ok((k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?))
        })
        .collect::<Result<_>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &dir.join("adapter_model.safetensors"))?;
    let targets = match &cfg.target_modules {
        Targets::Names(n) => json!(n),
        Targets::Regex(r) => json!(r),
    };
    let config = json!({
        "peft_type": "LORA",
        "task_type": null,
        "base_model_name_or_path": base_model,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "use_rslora": cfg.use_rslora,
        "use_dora": false,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    });
    std::fs::write(dir.join("adapter_config.json"), serde_json::to_string_pretty(&config)? + "\n")?;
    Ok(())
}

/// Read a PEFT adapter directory: its LoRA config and, per module name, (A [d_in, r], B [r, d_out]).
#[allow(clippy::type_complexity)]
pub fn read_adapter(
    dir: &Path,
) -> Result<(LoraConfig, BTreeMap<String, ((usize, usize, Vec<f32>), (usize, usize, Vec<f32>))>)> {
    let cfg_path = dir.join("adapter_config.json");
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", cfg_path.display()))?;
    let get = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    if get("peft_type").as_str().is_some_and(|t| t != "LORA") {
        bail!("{}: peft_type {} is not LORA", cfg_path.display(), get("peft_type"));
    }
    for (key, ok) in [
        ("use_dora", get("use_dora").as_bool() != Some(true)),
        ("bias", get("bias").as_str().is_none_or(|b| b == "none")),
        (
            "modules_to_save",
            get("modules_to_save").is_null() || get("modules_to_save").as_array().is_some_and(|a| a.is_empty()),
        ),
        ("rank_pattern", get("rank_pattern").as_object().is_none_or(|o| o.is_empty())),
        ("alpha_pattern", get("alpha_pattern").as_object().is_none_or(|o| o.is_empty())),
        ("fan_in_fan_out", get("fan_in_fan_out").as_bool() != Some(true)),
    ] {
        if !ok {
            bail!("{}: `{key}` = {} is not supported", cfg_path.display(), get(key));
        }
    }
    let r = get("r").as_u64().with_context(|| format!("{}: no `r`", cfg_path.display()))? as usize;
    let target_modules = match get("target_modules") {
        Value::String(s) => Targets::Regex(s),
        Value::Array(a) => Targets::Names(a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()),
        _ => Targets::Names(vec![]),
    };
    let cfg = LoraConfig {
        r,
        alpha: get("lora_alpha").as_f64().unwrap_or(8.0),
        dropout: get("lora_dropout").as_f64().unwrap_or(0.0),
        target_modules,
        use_rslora: get("use_rslora").as_bool().unwrap_or(false),
    };
    let st_path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&st_path)
        .with_context(|| format!("cannot read {} (PyTorch .bin adapters are not supported)", st_path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut a_of: BTreeMap<String, (usize, usize, Vec<f32>)> = BTreeMap::new();
    let mut b_of: BTreeMap<String, (usize, usize, Vec<f32>)> = BTreeMap::new();
    for (key, view) in st.tensors() {
        let name = key.strip_prefix(PREFIX).unwrap_or(&key);
        let (module, which) = if let Some(m) =
            name.strip_suffix(".lora_A.weight").or_else(|| name.strip_suffix(".lora_A.default.weight"))
        {
            (m, 'A')
        } else if let Some(m) =
            name.strip_suffix(".lora_B.weight").or_else(|| name.strip_suffix(".lora_B.default.weight"))
        {
            (m, 'B')
        } else {
            bail!("{}: unexpected tensor `{key}` (only LoRA A/B weights are supported)", st_path.display());
        };
        let shape = view.shape().to_vec();
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => {
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
            }
            safetensors::Dtype::F16 => {
                view.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            safetensors::Dtype::BF16 => {
                view.data().chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            d => bail!("{}: `{key}` has dtype {d:?}", st_path.display()),
        };
        if shape.len() != 2 {
            bail!("{}: `{key}` has shape {shape:?}", st_path.display());
        }
        // Transpose to our layout: A [r, d_in] -> [d_in, r]; B [d_out, r] -> [r, d_out].
        let (rows, cols) = (shape[0], shape[1]);
        let mut t = vec![0.0f32; values.len()];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = values[i * cols + j];
            }
        }
        let entry = (cols, rows, t);
        if which == 'A' {
            a_of.insert(module.to_string(), entry)
        } else {
            b_of.insert(module.to_string(), entry)
        };
    }
    let mut out = BTreeMap::new();
    for (m, a) in a_of {
        let b = b_of.remove(&m).with_context(|| format!("{}: `{m}` has lora_A but no lora_B", st_path.display()))?;
        out.insert(m, (a, b));
    }
    if let Some(m) = b_of.keys().next() {
        bail!("{}: `{m}` has lora_B but no lora_A", st_path.display());
    }
    Ok((cfg, out))
}

/// Attach the adapters in `dirs` as experts 0..n of one multi-expert adapter set.
pub fn load_experts(model: &mut Whisper, dirs: &[PathBuf], device: &Device) -> Result<LoraConfig> {
    let mut cfgs = Vec::new();
    let mut all = Vec::new();
    for d in dirs {
        let (c, t) = read_adapter(d)?;
        cfgs.push(c);
        all.push(t);
    }
    let Some(first) = cfgs.first().cloned() else { bail!("no adapter directories given") };
    for (c, d) in cfgs.iter().zip(dirs) {
        if c.r != first.r || c.alpha != first.alpha || c.use_rslora != first.use_rslora {
            bail!(
                "{}: r/alpha differ from {} (experts of one mixture must share them)",
                d.display(),
                dirs[0].display()
            );
        }
    }
    let modules: Vec<String> = all[0].keys().cloned().collect();
    for (t, d) in all.iter().zip(dirs) {
        let m: Vec<String> = t.keys().cloned().collect();
        if m != modules {
            bail!("{} adapts other modules than {}", d.display(), dirs[0].display());
        }
    }
    let e = dirs.len();
    let mut found = 0;
    for (name, proj) in model.projs_mut() {
        if !all[0].contains_key(&name) {
            continue;
        }
        found += 1;
        let (d_in, d_out, r) = (proj.d_in(), proj.d_out(), first.r);
        let mut a = Vec::with_capacity(e * d_in * r);
        let mut b = Vec::with_capacity(e * r * d_out);
        for (t, dir) in all.iter().zip(dirs) {
            let ((ai, ar, av), (br, bo, bv)) = &t[&name];
            if (*ai, *ar, *br, *bo) != (d_in, r, r, d_out) {
                bail!(
                    "{}: `{name}` has A {ai}x{ar}, B {br}x{bo}; the model needs {d_in}x{r} and {r}x{d_out}",
                    dir.display()
                );
            }
            a.extend_from_slice(av);
            b.extend_from_slice(bv);
        }
        proj.lora = Some(MultiLora {
            a: trainable(&format!("{name}.lora_A"), Tensor::from_data(TensorData::new(a, [e, d_in, r]), device)),
            b: trainable(&format!("{name}.lora_B"), Tensor::from_data(TensorData::new(b, [e, r, d_out]), device)),
            scale: first.scale(),
            dropout: first.dropout,
        });
    }
    if found != modules.len() {
        let known: Vec<String> = model.projs_mut().into_iter().map(|(n, _)| n).collect();
        let missing: Vec<&String> = modules.iter().filter(|m| !known.contains(m)).collect();
        bail!("{}: adapter modules not in this model: {missing:?}", dirs[0].display());
    }
    Ok(first)
}
