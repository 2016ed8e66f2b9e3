//! Content hashes of files and directories, with a stat-keyed cache so that an unchanged tree
//! is not read again.
//!
//! A file's hash is blake3 of its bytes. A directory's hash is blake3 over its sorted
//! (relative path, file hash) pairs, so it depends on content and names only, not on mtimes,
//! inodes or where the tree lives.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stat {
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

impl Stat {
    fn of(md: &fs::Metadata) -> Stat {
        Stat {
            size: md.size(),
            mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
            inode: md.ino(),
        }
    }
}

/// File hashes keyed by path and validated by (size, mtime, inode).
pub struct HashCache {
    file: Option<PathBuf>,
    entries: HashMap<PathBuf, (Stat, [u8; 32])>,
    dirty: bool,
}

impl HashCache {
    /// An empty cache that is never saved.
    pub fn in_memory() -> HashCache {
        HashCache { file: None, entries: HashMap::new(), dirty: false }
    }

    /// Load the cache stored at `file` (a missing or unreadable cache is an empty one).
    pub fn open(file: &Path) -> HashCache {
        let mut cache = HashCache { file: Some(file.to_path_buf()), ..HashCache::in_memory() };
        if let Ok(f) = fs::File::open(file) {
            for line in BufReader::new(f).lines().map_while(|l| l.ok()) {
                if let Some((path, entry)) = parse_line(&line) {
                    cache.entries.insert(path, entry);
                }
            }
        }
        cache
    }

    /// Write the cache back if anything changed.
    pub fn save(&mut self) -> Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        if !self.dirty {
            return Ok(());
        }
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir)?;
        }
        // Several processes, on several nodes, may save the cache at once (Slurm jobs): each
        // through a file of its own.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let tmp = file.with_extension(format!("tmp.{}.{}.{nanos}", host.trim(), std::process::id()));
        {
            let mut w = BufWriter::new(fs::File::create(&tmp)?);
            for (path, (st, hash)) in &self.entries {
                writeln!(w, "{}\t{}\t{}\t{}\t{}", st.inode, st.size, st.mtime_ns, hex(hash), path.display())?;
            }
            w.flush()?;
        }
        fs::rename(&tmp, file)?;
        self.dirty = false;
        Ok(())
    }

    /// The hash of a file or directory, or None when it does not exist.
    pub fn hash_path(&mut self, path: &Path) -> Result<Option<String>> {
        let md = match fs::metadata(path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
        };
        if md.is_dir() {
            let mut files = Vec::new();
            walk(path, Path::new(""), &mut files).with_context(|| format!("cannot list {}", path.display()))?;
            files.sort_by(|a, b| a.0.cmp(&b.0));
            let mut h = blake3::Hasher::new();
            for (rel, md) in files {
                let fh = self.file_hash(&path.join(&rel), &md)?;
                let rel = rel.to_string_lossy();
                h.update(&(rel.len() as u64).to_le_bytes());
                h.update(rel.as_bytes());
                h.update(&fh);
            }
            Ok(Some(format!("dir:{}", h.finalize().to_hex())))
        } else {
            Ok(Some(hex(&self.file_hash(path, &md)?)))
        }
    }

    fn file_hash(&mut self, path: &Path, md: &fs::Metadata) -> Result<[u8; 32]> {
        let st = Stat::of(md);
        if let Some((cached, hash)) = self.entries.get(path) {
            if *cached == st {
                return Ok(*hash);
            }
        }
        let hash = hash_file(path)?;
        // A file modified within the last second could change again without its mtime
        // moving ("racy" entries, as git calls them): do not trust the stat for it yet.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
        if now - st.mtime_ns > 1_000_000_000 {
            self.entries.insert(path.to_path_buf(), (st, hash));
            self.dirty = true;
        }
        Ok(hash)
    }
}

/// Every file under `root` (relative path, metadata), subdirectories listed in parallel:
/// on a 10k-file tree the stat calls dominate `pipeline status`.
fn walk(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) -> std::io::Result<()> {
    use rayon::prelude::*;
    let mut dirs = Vec::new();
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let rel_child = rel.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_dir() {
            dirs.push(rel_child);
        } else if ft.is_symlink() {
            let md = fs::metadata(root.join(&rel_child))?;
            if md.is_dir() {
                dirs.push(rel_child);
            } else {
                out.push((rel_child, md));
            }
        } else {
            out.push((rel_child, entry.metadata()?));
        }
    }
    let nested: Vec<std::io::Result<Vec<(PathBuf, fs::Metadata)>>> = dirs
        .par_iter()
        .map(|d| {
            let mut v = Vec::new();
            walk(root, d, &mut v).map(|()| v)
        })
        .collect();
    for n in nested {
        out.extend(n?);
    }
    Ok(())
}

/// blake3 of a file's content.
pub use crate::util::{hash_file, hash_str};

fn hex(bytes: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*bytes).to_hex().to_string()
}

fn parse_line(line: &str) -> Option<(PathBuf, (Stat, [u8; 32]))> {
    let mut it = line.splitn(5, '\t');
    let inode = it.next()?.parse().ok()?;
    let size = it.next()?.parse().ok()?;
    let mtime_ns = it.next()?.parse().ok()?;
    let hash = blake3::Hash::from_hex(it.next()?).ok()?;
    let path = PathBuf::from(it.next()?);
    Some((path, (Stat { size, mtime_ns, inode }, *hash.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wm-hash-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn directory_hash_depends_on_content_and_names_only() {
        let a = tmpdir("a");
        let b = tmpdir("b");
        for d in [&a, &b] {
            fs::create_dir_all(d.join("sub")).unwrap();
            fs::write(d.join("x.txt"), "hello").unwrap();
            fs::write(d.join("sub/y.txt"), "world").unwrap();
        }
        let mut c = HashCache::in_memory();
        let ha = c.hash_path(&a).unwrap().unwrap();
        assert_eq!(ha, c.hash_path(&b).unwrap().unwrap());
        fs::write(b.join("sub/y.txt"), "World").unwrap();
        assert_ne!(ha, c.hash_path(&b).unwrap().unwrap());
        fs::write(b.join("sub/y.txt"), "world").unwrap();
        fs::rename(b.join("sub/y.txt"), b.join("sub/z.txt")).unwrap();
        assert_ne!(ha, c.hash_path(&b).unwrap().unwrap());
        assert!(c.hash_path(&a.join("missing")).unwrap().is_none());
        // A file's hash is blake3 of its bytes (independent reference: the blake3 crate itself).
        assert_eq!(c.hash_path(&a.join("x.txt")).unwrap().unwrap(), blake3::hash(b"hello").to_hex().to_string());
    }

    #[test]
    fn cache_round_trips_and_detects_changes() {
        let d = tmpdir("cache");
        let f = d.join("f.bin");
        fs::write(&f, "one").unwrap();
        // Age the file so the entry is cached (fresh files are treated as racy).
        let old = SystemTime::now() - std::time::Duration::from_secs(10);
        fs::File::options().write(true).open(&f).unwrap().set_modified(old).unwrap();
        let store = d.join("cache.tsv");
        let mut c = HashCache::open(&store);
        let h1 = c.hash_path(&f).unwrap().unwrap();
        c.save().unwrap();
        let mut c2 = HashCache::open(&store);
        assert_eq!(c2.entries.len(), 1);
        assert_eq!(c2.hash_path(&f).unwrap().unwrap(), h1);
        // Same size, new content and mtime: the stat no longer matches, so it is re-read.
        fs::write(&f, "two").unwrap();
        assert_ne!(c2.hash_path(&f).unwrap().unwrap(), h1);
    }
}
