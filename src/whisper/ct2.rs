//! Import faster-whisper (CTranslate2) checkpoints into Hugging Face layout.
//!
//! CTranslate2's `model.bin` (binary version 6, `WhisperSpec`) holds the same tensors as the HF
//! checkpoint under other names, with the attention projections fused: self-attention
//! `linear_0` = [q; k; v], cross-attention `linear_1` = [k; v], with zero k-bias slices (HF's
//! k_proj has no bias). Reference: CTranslate2 `python/ctranslate2/specs/model_spec.py`
//! (`_serialize`) and `python/ctranslate2/converters/transformers.py` (`WhisperLoader`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use safetensors::Dtype;
use serde_json::{Value, json};

/// One variable of a model.bin.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub struct Ct2Model {
    pub spec: String,
    pub revision: u32,
    pub variables: Vec<Variable>,
    pub aliases: Vec<(String, String)>,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.pos + n > self.b.len() {
            bail!("model.bin is truncated at byte {} (wanted {n} more)", self.pos);
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    /// u16 length including a trailing NUL, then the bytes.
    fn string(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        let raw = self.take(n)?;
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        Ok(String::from_utf8(raw.to_vec()).context("model.bin: a name is not UTF-8")?)
    }
}

/// Parse a CTranslate2 model.bin (versions 1 to 6).
pub fn parse(bytes: &[u8]) -> Result<Ct2Model> {
    let mut r = Reader { b: bytes, pos: 0 };
    let version = r.u32()?;
    if version == 0 || version > 6 {
        bail!("model.bin has binary version {version}; versions 1 to 6 are supported");
    }
    let (spec, revision) = if version >= 2 { (r.string()?, r.u32()?) } else { (String::new(), 1) };
    let n = r.u32()? as usize;
    let mut variables = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.string()?;
        let rank = r.u8()? as usize;
        let shape = (0..rank).map(|_| r.u32().map(|d| d as usize)).collect::<Result<Vec<_>>>()?;
        let (dtype, nbytes) = if version >= 4 {
            let code = r.u8()?;
            let nbytes = r.u32()? as usize;
            let dtype = match code {
                0 => Dtype::F32,
                1 => Dtype::I8,
                2 => Dtype::I16,
                3 => Dtype::I32,
                4 => Dtype::F16,
                5 => Dtype::BF16,
                c => bail!("variable {name}: unknown dtype code {c}"),
            };
            (dtype, nbytes)
        } else {
            let item = r.u8()? as usize;
            let count = r.u32()? as usize;
            let dtype = match item {
                4 => Dtype::F32,
                2 => Dtype::I16,
                1 => Dtype::I8,
                s => bail!("variable {name}: unknown item size {s}"),
            };
            (dtype, item * count)
        };
        let data = r.take(nbytes)?.to_vec();
        variables.push(Variable { name, shape, dtype, data });
    }
    let mut aliases = Vec::new();
    if version >= 3 {
        let na = r.u32()?;
        for _ in 0..na {
            aliases.push((r.string()?, r.string()?));
        }
    }
    if r.pos != bytes.len() {
        bail!("model.bin has {} unexpected trailing bytes", bytes.len() - r.pos);
    }
    Ok(Ct2Model { spec, revision, variables, aliases })
}

/// HF name of a (non-fused) ct2 variable; None for scalars and attributes we do not write.
fn hf_name(ct2: &str) -> Option<String> {
    let parts: Vec<&str> = ct2.split('/').collect();
    let leaf = match *parts.last()? {
        "gamma" | "weight" => "weight",
        "beta" | "bias" => "bias",
        "encodings" => "weight",
        _ => return None,
    };
    let side = parts[0]; // encoder | decoder
    let mapped: String = match &parts[1..parts.len() - 1] {
        ["conv1"] => "conv1".into(),
        ["conv2"] => "conv2".into(),
        ["position_encodings"] => "embed_positions".into(),
        ["embeddings"] => "embed_tokens".into(),
        ["layer_norm"] => "layer_norm".into(),
        [layer, rest @ ..] if layer.starts_with("layer_") => {
            let i = &layer[6..];
            let m = match rest {
                ["self_attention", "linear_1"] => "self_attn.out_proj",
                ["self_attention", "layer_norm"] => "self_attn_layer_norm",
                ["attention", "linear_0"] => "encoder_attn.q_proj",
                ["attention", "linear_2"] => "encoder_attn.out_proj",
                ["attention", "layer_norm"] => "encoder_attn_layer_norm",
                ["ffn", "linear_0"] => "fc1",
                ["ffn", "linear_1"] => "fc2",
                ["ffn", "layer_norm"] => "final_layer_norm",
                _ => return None,
            };
            format!("layers.{i}.{m}")
        }
        _ => return None,
    };
    Some(format!("model.{side}.{mapped}.{leaf}"))
}

/// A tensor in HF layout, ready for safetensors.
pub struct HfTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Rows [from, to) of a row-major tensor.
fn rows(v: &Variable, from: usize, to: usize) -> HfTensor {
    let row_elems: usize = v.shape[1..].iter().product();
    let item = v.data.len() / v.shape.iter().product::<usize>().max(1);
    let mut shape = v.shape.clone();
    shape[0] = to - from;
    HfTensor { dtype: v.dtype, shape, data: v.data[from * row_elems * item..to * row_elems * item].to_vec() }
}

/// Map a Whisper ct2 model to HF tensors, splitting the fused projections.
pub fn to_hf(m: &Ct2Model) -> Result<BTreeMap<String, HfTensor>> {
    if !m.spec.is_empty() && m.spec != "WhisperSpec" {
        bail!("model.bin holds a {} model, not Whisper", m.spec);
    }
    if m.variables.iter().any(|v| v.name.ends_with("_scale")) {
        bail!("model.bin is quantized (int8/int16 weights with scales); import a float16 or float32 conversion");
    }
    let mut out = BTreeMap::new();
    for v in &m.variables {
        if v.shape.is_empty() {
            continue; // scalar attributes (num_heads, activation, ...)
        }
        if !matches!(v.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            bail!("variable {} has dtype {:?}; expected a float type", v.name, v.dtype);
        }
        let n = &v.name;
        let prefix = |s: &str| n.rsplit_once(s).map(|(p, _)| p.to_string());
        if let Some(p) = prefix("/self_attention/linear_0/") {
            let hf = hf_name(&format!("{p}/self_attention/linear_1/weight")).unwrap().replace("out_proj.weight", "");
            let d = v.shape[0] / 3;
            if n.ends_with("weight") {
                out.insert(format!("{hf}q_proj.weight"), rows(v, 0, d));
                out.insert(format!("{hf}k_proj.weight"), rows(v, d, 2 * d));
                out.insert(format!("{hf}v_proj.weight"), rows(v, 2 * d, 3 * d));
            } else {
                check_zero(v, d, 2 * d)?;
                out.insert(format!("{hf}q_proj.bias"), rows(v, 0, d));
                out.insert(format!("{hf}v_proj.bias"), rows(v, 2 * d, 3 * d));
            }
            continue;
        }
        if let Some(p) = prefix("/attention/linear_1/") {
            let hf = hf_name(&format!("{p}/attention/linear_0/weight")).unwrap().replace("q_proj.weight", "");
            let d = v.shape[0] / 2;
            if n.ends_with("weight") {
                out.insert(format!("{hf}k_proj.weight"), rows(v, 0, d));
                out.insert(format!("{hf}v_proj.weight"), rows(v, d, 2 * d));
            } else {
                check_zero(v, 0, d)?;
                out.insert(format!("{hf}v_proj.bias"), rows(v, d, 2 * d));
            }
            continue;
        }
        match hf_name(n) {
            Some(hf) => {
                out.insert(hf, HfTensor { dtype: v.dtype, shape: v.shape.clone(), data: v.data.clone() });
            }
            None if n == "decoder/projection/weight" => {} // tied to the token embedding
            None => bail!("model.bin variable `{n}` has no Hugging Face counterpart"),
        }
    }
    Ok(out)
}

/// HF's k_proj has no bias; ct2 fuses a zero one. Dropping it must lose nothing.
fn check_zero(v: &Variable, from: usize, to: usize) -> Result<()> {
    let item = v.data.len() / v.shape[0];
    if v.data[from * item..to * item].iter().any(|&b| b != 0) {
        bail!("{}: the fused key bias is not zero; this model cannot be expressed in HF layout", v.name);
    }
    Ok(())
}

/// Convert a CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json,
/// vocabulary.txt) into an HF checkpoint directory `out`.
pub fn import_dir(ct2_dir: &Path, out: &Path) -> Result<()> {
    let bin = ct2_dir.join("model.bin");
    let bytes = std::fs::read(&bin).with_context(|| format!("cannot read {}", bin.display()))?;
    let model = parse(&bytes).with_context(|| format!("parsing {}", bin.display()))?;
    let tensors = to_hf(&model)?;
    std::fs::create_dir_all(out)?;

    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)?)))
        .collect::<Result<_>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &out.join("model.safetensors"))?;

    let scalar = |name: &str| -> Option<i64> {
        let v = model.variables.iter().find(|v| v.name == name)?;
        Some(match v.dtype {
            Dtype::I8 => v.data[0] as i8 as i64,
            Dtype::I16 => i16::from_le_bytes([v.data[0], v.data[1]]) as i64,
            Dtype::I32 => i32::from_le_bytes(v.data[..4].try_into().ok()?) as i64,
            _ => return None,
        })
    };
    let shape =
        |name: &str| tensors.get(name).map(|t| t.shape.clone()).with_context(|| format!("model.bin lacks {name}"));
    let emb = shape("model.decoder.embed_tokens.weight")?;
    let (vocab, d_model) = (emb[0], emb[1]);
    let count = |side: &str| {
        tensors.keys().filter(|k| k.starts_with(&format!("model.{side}.layers.")) && k.ends_with("fc1.weight")).count()
    };
    let ffn = shape("model.encoder.layers.0.fc1.weight")?[0];
    let n_mels = shape("model.encoder.conv1.weight")?[1];
    let n_audio = shape("model.encoder.embed_positions.weight")?[0];
    let n_text = shape("model.decoder.embed_positions.weight")?[0];
    let enc_heads = scalar("encoder/num_heads").context("model.bin lacks encoder/num_heads")?;
    let dec_heads = scalar("decoder/num_heads").context("model.bin lacks decoder/num_heads")?;

    let ct2_config: Value = match std::fs::read_to_string(ct2_dir.join("config.json")) {
        Ok(t) => serde_json::from_str(&t)?,
        Err(_) => json!({}),
    };
    let suppress = ct2_config.get("suppress_ids").cloned().unwrap_or(json!([]));
    let begin = ct2_config.get("suppress_ids_begin").cloned().unwrap_or(json!([220, 50256]));

    // The tokenizer: add the tokens vocabulary.txt has beyond tokenizer.json (timestamps).
    let tok_text =
        std::fs::read_to_string(ct2_dir.join("tokenizer.json")).context("the ct2 directory lacks tokenizer.json")?;
    let mut tok: Value = serde_json::from_str(&tok_text)?;
    let vocab_lines: Vec<String> = std::fs::read_to_string(ct2_dir.join("vocabulary.txt"))
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default();
    let added = tok["added_tokens"].as_array_mut().context("tokenizer.json has no added_tokens")?;
    let max_id = added.iter().filter_map(|t| t["id"].as_u64()).max().unwrap_or(0) as usize;
    for (id, content) in vocab_lines.iter().enumerate().skip(max_id + 1) {
        added.push(json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": false}));
    }
    let token_id = |t: &str| -> Option<u64> {
        tok["added_tokens"].as_array()?.iter().find(|a| a["content"] == t).and_then(|a| a["id"].as_u64())
    };
    let eot = token_id("<|endoftext|>").context("tokenizer lacks <|endoftext|>")?;
    let sot = token_id("<|startoftranscript|>").context("tokenizer lacks <|startoftranscript|>")?;
    let no_ts = token_id("<|notimestamps|>").context("tokenizer lacks <|notimestamps|>")?;
    let prev = token_id("<|startofprev|>");
    let multilingual = vocab >= 51865;
    std::fs::write(out.join("tokenizer.json"), serde_json::to_string_pretty(&tok)?)?;

    let config = json!({
        "activation_dropout": 0.0, "activation_function": "gelu", "apply_spec_augment": false,
        "architectures": ["WhisperForConditionalGeneration"], "attention_dropout": 0.0,
        "begin_suppress_tokens": begin, "bos_token_id": eot, "d_model": d_model,
        "decoder_attention_heads": dec_heads, "decoder_ffn_dim": ffn, "decoder_layers": count("decoder"),
        "decoder_start_token_id": sot, "dropout": 0.0, "encoder_attention_heads": enc_heads,
        "encoder_ffn_dim": ffn, "encoder_layers": count("encoder"), "eos_token_id": eot,
        "is_encoder_decoder": true, "max_source_positions": n_audio, "max_target_positions": n_text,
        "model_type": "whisper", "num_hidden_layers": count("encoder"), "num_mel_bins": n_mels,
        "pad_token_id": eot, "scale_embedding": false, "suppress_tokens": suppress,
        "tie_word_embeddings": true, "torch_dtype": "float16", "use_cache": true, "vocab_size": vocab,
    });
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&config)? + "\n")?;

    let mut generation = json!({
        "begin_suppress_tokens": begin, "bos_token_id": eot, "decoder_start_token_id": sot,
        "eos_token_id": eot, "forced_decoder_ids": [[1, no_ts]], "is_multilingual": multilingual,
        "max_length": n_text, "no_timestamps_token_id": no_ts, "pad_token_id": eot,
        "return_timestamps": false, "suppress_tokens": suppress,
    });
    if let Some(h) = ct2_config.get("alignment_heads") {
        generation["alignment_heads"] = h.clone();
    }
    if let Some(p) = prev {
        generation["prev_sot_token_id"] = json!(p);
    }
    if multilingual {
        let mut langs = serde_json::Map::new();
        for id in ct2_config.get("lang_ids").and_then(Value::as_array).into_iter().flatten() {
            if let Some(t) = id.as_u64().and_then(|i| vocab_lines.get(i as usize)) {
                langs.insert(t.clone(), id.clone());
            }
        }
        generation["lang_to_id"] = Value::Object(langs);
        generation["task_to_id"] =
            json!({"transcribe": token_id("<|transcribe|>"), "translate": token_id("<|translate|>")});
        // As openai's multilingual checkpoints on the Hub: with no language given, generate()
        // detects it and puts it at position 1, <|transcribe|> at 2.
        generation["forced_decoder_ids"] = json!([[1, null], [2, token_id("<|transcribe|>")]]);
        generation["max_initial_timestamp_index"] = json!(50);
    }
    std::fs::write(out.join("generation_config.json"), serde_json::to_string_pretty(&generation)? + "\n")?;

    let pre = json!({
        "chunk_length": 30, "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": n_mels,
        "hop_length": 160, "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000, "padding_side": "right",
        "padding_value": 0.0, "processor_class": "WhisperProcessor", "return_attention_mask": false,
        "sampling_rate": 16000,
    });
    std::fs::write(out.join("preprocessor_config.json"), serde_json::to_string_pretty(&pre)? + "\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_str(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    }

    fn push_var(b: &mut Vec<u8>, name: &str, shape: &[u32], code: u8, data: &[u8]) {
        push_str(b, name);
        b.push(shape.len() as u8);
        for d in shape {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.push(code);
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(data);
    }

    #[test]
    fn parses_and_splits_fused_projections() {
        // A hand-built v6 file: one fused self-attention (d = 1) and a scalar.
        let mut b = Vec::new();
        b.extend_from_slice(&6u32.to_le_bytes());
        push_str(&mut b, "WhisperSpec");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        push_var(&mut b, "decoder/num_heads", &[], 2, &6i16.to_le_bytes());
        push_var(&mut b, "encoder/layer_0/self_attention/linear_0/bias", &[3], 0, &f(&[1.0, 0.0, 3.0]));
        push_var(&mut b, "encoder/layer_0/self_attention/linear_0/weight", &[3, 1], 0, &f(&[10.0, 20.0, 30.0]));
        b.extend_from_slice(&1u32.to_le_bytes());
        push_str(&mut b, "decoder/projection/weight");
        push_str(&mut b, "decoder/embeddings/weight");
        let m = parse(&b).unwrap();
        assert_eq!((m.spec.as_str(), m.revision, m.variables.len()), ("WhisperSpec", 3, 3));
        assert_eq!(m.aliases, vec![("decoder/projection/weight".into(), "decoder/embeddings/weight".into())]);
        let hf = to_hf(&m).unwrap();
        let p = "model.encoder.layers.0.self_attn";
        assert_eq!(hf[&format!("{p}.k_proj.weight")].data, f(&[20.0]));
        assert_eq!(hf[&format!("{p}.v_proj.bias")].data, f(&[3.0]));
        assert!(!hf.contains_key(&format!("{p}.k_proj.bias")));
        assert_eq!(hf.len(), 5);
        // A truncated file is an error, not a panic.
        assert!(parse(&b[..b.len() - 3]).is_err());
    }

    #[test]
    fn maps_names() {
        assert_eq!(
            hf_name("encoder/layer_3/ffn/layer_norm/gamma").unwrap(),
            "model.encoder.layers.3.final_layer_norm.weight"
        );
        assert_eq!(
            hf_name("decoder/layer_1/attention/linear_2/bias").unwrap(),
            "model.decoder.layers.1.encoder_attn.out_proj.bias"
        );
        assert_eq!(hf_name("encoder/position_encodings/encodings").unwrap(), "model.encoder.embed_positions.weight");
        assert_eq!(hf_name("decoder/embeddings/weight").unwrap(), "model.decoder.embed_tokens.weight");
    }
}
