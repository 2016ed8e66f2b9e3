//! Small things every layer uses: atomic JSON files, content hashes, deterministic
//! safetensors files, the process's peak memory.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};

/// Write a small JSON file atomically (temporary name, then rename). Struct fields keep their
/// declared order and maps are sorted, so the bytes depend only on the value.
pub fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(v)? + "\n")
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))?;
    Ok(())
}

/// Read a JSON file into `T`, naming the file in every error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not what was expected", path.display()))
}

/// blake3 of a file's content.
pub fn hash_file(path: &Path) -> Result<[u8; 32]> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(*h.finalize().as_bytes())
}

/// blake3 of a string, as hex.
pub fn hash_str(s: &str) -> String {
    blake3::hash(s.as_bytes()).to_hex().to_string()
}

/// Write f32 tensors as safetensors with the header's metadata in sorted order (the
/// `safetensors` crate keeps metadata in a HashMap, whose order changes from run to run, so
/// the same tensors gave different bytes). Tensors are laid out in the order given.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    }
    let mut offset = 0usize;
    for (name, shape, values) in tensors {
        let bytes = values.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    // serde_json's Map is a BTreeMap: keys come out sorted.
    let mut head = serde_json::to_string(&header)?.into_bytes();
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for (_, _, values) in tensors {
        out.extend(values.iter().flat_map(|x| x.to_le_bytes()));
    }
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
    }
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, out).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))?;
    Ok(())
}

/// An exclusive lock (flock) on `path`, created if missing, held until the file is dropped:
/// between threads and between processes, also on other nodes of a filesystem that supports it.
pub fn lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    f.lock()?;
    Ok(f)
}

/// The process's peak resident set size in MB (Linux; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_are_byte_stable_and_readable() {
        let dir = std::env::temp_dir().join(format!("wm-util-{}", std::process::id()));
        let meta: BTreeMap<String, String> = (0..12).map(|i| (format!("key{i}"), format!("value{i}"))).collect();
        let t = vec![("b.w".to_string(), vec![2, 2], vec![1.0f32, 2.0, 3.0, 4.0]), ("a".into(), vec![1], vec![0.5])];
        write_safetensors(&dir.join("x.safetensors"), &t, &meta).unwrap();
        let first = std::fs::read(dir.join("x.safetensors")).unwrap();
        write_safetensors(&dir.join("x.safetensors"), &t, &meta).unwrap();
        assert_eq!(first, std::fs::read(dir.join("x.safetensors")).unwrap());
        let st = safetensors::SafeTensors::deserialize(&first).unwrap();
        let w = st.tensor("b.w").unwrap();
        assert_eq!(w.shape(), [2, 2]);
        let v: Vec<f32> = w.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(v, [1.0, 2.0, 3.0, 4.0]);
        let (_, m) = safetensors::SafeTensors::read_metadata(&first).unwrap();
        assert_eq!(m.metadata().as_ref().unwrap().get("key11").map(String::as_str), Some("value11"));
    }
}
