//! `dump` and `load`: a volume's metadata as JSON Lines, engine-neutral.
//!
//! Every stored key becomes one self-describing JSON line (an inode's
//! attributes, a directory entry, a chunk's slice records, an xattr, a
//! symlink target, a counter, ...), and every line turns back into exactly
//! that key and value, so a dump loaded into any engine and dumped again is
//! byte-identical. Both directions stream: the dump walks the key space in
//! pages of [`PAGE`] keys, the load writes batches of [`BATCH`] keys, so
//! memory stays bounded however many files the volume has.
//!
//! Left out on purpose: sessions and locks (state of live mounts), files
//! deleted but still open somewhere (nlink 0) and the queue of deleted
//! files awaiting cleanup — a loaded copy shares the source's objects, and
//! it must never delete them on the source's behalf.

use std::io::{BufRead, Write};

use serde_json::{json, Value};

use crate::attr::{Attr, FileType};
use crate::keys;
use crate::kv::{run_txn, KvEngine};
use crate::slice::{SliceKind, SliceRecord};
use crate::{Ino, MetaError, Result};

/// Keys read per transaction while dumping.
pub const PAGE: usize = 1000;
/// Keys written per transaction while loading (under etcd's default limit
/// of 128 operations per transaction).
pub const BATCH: usize = 100;
const DUMP_VERSION: u64 = 1;

/// What a dump or load went through.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DumpStats {
    pub inodes: u64,
    pub entries: u64,
    pub chunks: u64,
    pub keys: u64,
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> MetaError {
    MetaError::Corrupt(format!("{what}: {detail}"))
}

/// Bytes as a JSON string when they are UTF-8, else `{"hex": "..."}`.
fn bytes_json(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "hex": hex(b) }),
    }
}

fn json_bytes(v: &Value) -> Result<Vec<u8>> {
    match v {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Object(o) => match o.get("hex").and_then(Value::as_str) {
            Some(h) => unhex(h),
            None => Err(corrupt(
                "dump line",
                "bytes must be a string or {\"hex\": ...}",
            )),
        },
        _ => Err(corrupt(
            "dump line",
            "bytes must be a string or {\"hex\": ...}",
        )),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    if s.len() % 2 != 0 {
        return Err(corrupt("hex", "odd length"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| corrupt("hex", e)))
        .collect()
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::File => "file",
        FileType::Dir => "dir",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::BlockDev => "blockdev",
        FileType::CharDev => "chardev",
        FileType::Socket => "socket",
    }
}

fn type_from_name(s: &str) -> Result<FileType> {
    Ok(match s {
        "file" => FileType::File,
        "dir" => FileType::Dir,
        "symlink" => FileType::Symlink,
        "fifo" => FileType::Fifo,
        "blockdev" => FileType::BlockDev,
        "chardev" => FileType::CharDev,
        "socket" => FileType::Socket,
        other => return Err(corrupt("file type", other)),
    })
}

fn le_i64(v: &[u8]) -> Option<i64> {
    v.try_into().ok().map(i64::from_le_bytes)
}

/// The JSON line for one stored key, or None for keys a dump leaves out.
fn line_for(key: &[u8], value: &[u8]) -> Result<Option<Value>> {
    let raw = || json!({ "raw": hex(key), "value": hex(value) });
    let line = match key.first() {
        _ if key == keys::SETTING => {
            let format: Value =
                serde_json::from_slice(value).map_err(|e| corrupt("volume settings", e))?;
            json!({ "setting": format })
        }
        Some(b'C') => match (std::str::from_utf8(&key[1..]), le_i64(value)) {
            (Ok(name), Some(n)) => json!({ "counter": name, "value": n }),
            _ => raw(),
        },
        Some(b'A') if key.len() >= 10 => {
            let ino = keys::be_u64(key, 1).unwrap_or(0);
            let rest = &key[10..];
            match key[9] {
                b'I' => {
                    let a = Attr::decode(value)?;
                    json!({
                        "inode": ino, "type": type_name(a.typ), "mode": a.mode,
                        "uid": a.uid, "gid": a.gid, "nlink": a.nlink, "length": a.length,
                        "stored": a.stored,
                        "rdev": a.rdev, "parent": a.parent, "flags": a.flags,
                        "atime": [a.atime, a.atime_ns], "mtime": [a.mtime, a.mtime_ns],
                        "ctime": [a.ctime, a.ctime_ns],
                    })
                }
                b'D' if value.len() == 9 => {
                    let child = keys::be_u64(value, 0).unwrap_or(0);
                    let typ = FileType::from_u8(value[8])
                        .ok_or_else(|| corrupt("dentry type", value[8]))?;
                    json!({ "entry": ino, "name": bytes_json(rest), "ino": child, "type": type_name(typ) })
                }
                b'C' if rest.len() == 4 => {
                    let index = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                    let slices: Vec<Value> = SliceRecord::decode_all(value)?
                        .iter()
                        .map(|r| json!([r.kind as u8, r.pos, r.id, r.size, r.off, r.len]))
                        .collect();
                    json!({ "chunk": ino, "index": index, "slices": slices })
                }
                b'X' => {
                    json!({ "xattr": ino, "name": bytes_json(rest), "value": bytes_json(value) })
                }
                b'S' if rest.is_empty() => json!({ "symlink": ino, "target": bytes_json(value) }),
                b'P' if rest.len() == 8 => match le_i64(value) {
                    Some(n) => {
                        json!({ "link_parent": ino, "parent": keys::be_u64(rest, 0), "count": n })
                    }
                    None => raw(),
                },
                _ => raw(),
            }
        }
        Some(b'K') if key.len() == 17 => match le_i64(value) {
            Some(n) => {
                json!({ "slice_refs": keys::be_u64(key, 1), "size": keys::be_u64(key, 9), "extra": n })
            }
            None => raw(),
        },
        Some(b'E') if key.len() == 9 => {
            let obj: Value =
                serde_json::from_slice(value).map_err(|e| corrupt("external object", e))?;
            json!({ "external": keys::be_u64(key, 1), "object": obj })
        }
        // Live state and the cleanup queue: see the module comment.
        Some(b'D') | Some(b'G') | Some(b'L') | Some(b'S') => return Ok(None),
        _ => raw(),
    };
    Ok(Some(line))
}

fn field_u64(line: &Value, name: &str) -> Result<u64> {
    line.get(name).and_then(Value::as_u64).ok_or_else(|| {
        corrupt(
            "dump line",
            format!("{name} is missing or not a number: {line}"),
        )
    })
}

fn field_i64(line: &Value, name: &str) -> Result<i64> {
    line.get(name).and_then(Value::as_i64).ok_or_else(|| {
        corrupt(
            "dump line",
            format!("{name} is missing or not a number: {line}"),
        )
    })
}

fn narrow<T: TryFrom<u64>>(line: &Value, name: &str) -> Result<T> {
    T::try_from(field_u64(line, name)?)
        .map_err(|_| corrupt("dump line", format!("{name} is out of range: {line}")))
}

fn time_pair(line: &Value, name: &str) -> Result<(i64, u32)> {
    let bad = || {
        corrupt(
            "dump line",
            format!("{name} must be [seconds, nanoseconds]: {line}"),
        )
    };
    let pair = line.get(name).and_then(Value::as_array).ok_or_else(bad)?;
    match pair.as_slice() {
        [s, ns] => Ok((
            s.as_i64().ok_or_else(bad)?,
            ns.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(bad)?,
        )),
        _ => Err(bad()),
    }
}

/// The key and value a JSON line stands for.
fn key_value(line: &Value) -> Result<(Vec<u8>, Vec<u8>)> {
    let has = |k: &str| line.get(k).is_some();
    if let Some(format) = line.get("setting") {
        return Ok((keys::SETTING.to_vec(), format.to_string().into_bytes()));
    }
    if let Some(name) = line.get("counter").and_then(Value::as_str) {
        return Ok((
            keys::counter(name),
            field_i64(line, "value")?.to_le_bytes().to_vec(),
        ));
    }
    if has("inode") {
        let typ = type_from_name(line.get("type").and_then(Value::as_str).unwrap_or_default())?;
        let (atime, atime_ns) = time_pair(line, "atime")?;
        let (mtime, mtime_ns) = time_pair(line, "mtime")?;
        let (ctime, ctime_ns) = time_pair(line, "ctime")?;
        let a = Attr {
            typ,
            mode: narrow(line, "mode")?,
            uid: narrow(line, "uid")?,
            gid: narrow(line, "gid")?,
            atime,
            atime_ns,
            mtime,
            mtime_ns,
            ctime,
            ctime_ns,
            nlink: narrow(line, "nlink")?,
            length: field_u64(line, "length")?,
            // Dumps made before `stored` existed: the whole length.
            stored: match line.get("stored") {
                Some(_) => field_u64(line, "stored")?,
                None => field_u64(line, "length")?,
            },
            rdev: narrow(line, "rdev")?,
            parent: field_u64(line, "parent")?,
            flags: narrow(line, "flags")?,
        };
        return Ok((keys::attr(field_u64(line, "inode")?), a.encode()));
    }
    if has("entry") {
        let name = json_bytes(line.get("name").unwrap_or(&Value::Null))?;
        let typ = type_from_name(line.get("type").and_then(Value::as_str).unwrap_or_default())?;
        let mut v = field_u64(line, "ino")?.to_be_bytes().to_vec();
        v.push(typ as u8);
        return Ok((keys::dentry(field_u64(line, "entry")?, &name), v));
    }
    if has("chunk") {
        let mut v = Vec::new();
        for s in line
            .get("slices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let n: Vec<u64> = s
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            let [kind, pos, id, size, off, len] = n[..] else {
                return Err(corrupt(
                    "dump line",
                    format!("a slice is [kind, pos, id, size, off, len]: {line}"),
                ));
            };
            let kind = match kind {
                0 => SliceKind::Internal,
                1 => SliceKind::External,
                2 => SliceKind::Allocated,
                k => return Err(corrupt("slice kind", k)),
            };
            let small = |x: u64| u32::try_from(x).map_err(|_| corrupt("slice record", line));
            SliceRecord {
                kind,
                pos: small(pos)?,
                id,
                size,
                off,
                len: small(len)?,
            }
            .encode_into(&mut v);
        }
        return Ok((
            keys::chunk(field_u64(line, "chunk")?, narrow(line, "index")?),
            v,
        ));
    }
    if has("xattr") {
        let name = json_bytes(line.get("name").unwrap_or(&Value::Null))?;
        let value = json_bytes(line.get("value").unwrap_or(&Value::Null))?;
        return Ok((keys::xattr(field_u64(line, "xattr")?, &name), value));
    }
    if has("symlink") {
        let target = json_bytes(line.get("target").unwrap_or(&Value::Null))?;
        return Ok((keys::symlink(field_u64(line, "symlink")?), target));
    }
    if has("link_parent") {
        let key = keys::parent(field_u64(line, "link_parent")?, field_u64(line, "parent")?);
        return Ok((key, field_i64(line, "count")?.to_le_bytes().to_vec()));
    }
    if has("slice_refs") {
        let key = keys::slice_refs(field_u64(line, "slice_refs")?, field_u64(line, "size")?);
        return Ok((key, field_i64(line, "extra")?.to_le_bytes().to_vec()));
    }
    if has("external") {
        let obj = line.get("object").cloned().unwrap_or(Value::Null);
        return Ok((
            keys::external(field_u64(line, "external")?),
            obj.to_string().into_bytes(),
        ));
    }
    if let (Some(k), Some(v)) = (
        line.get("raw").and_then(Value::as_str),
        line.get("value").and_then(Value::as_str),
    ) {
        return Ok((unhex(k)?, unhex(v)?));
    }
    Err(corrupt(
        "dump line",
        format!("unknown kind of line: {line}"),
    ))
}

fn write_line(out: &mut dyn Write, v: &Value) -> Result<()> {
    serde_json::to_writer(&mut *out, v)
        .map_err(|e| MetaError::Engine(format!("writing the dump: {e}")))?;
    out.write_all(b"\n")
        .map_err(|e| MetaError::Engine(format!("writing the dump: {e}")))
}

/// Write every key of the volume in `engine` to `out`, one JSON line each.
pub fn dump(engine: &dyn KvEngine, out: &mut dyn Write) -> Result<DumpStats> {
    let mut stats = DumpStats::default();
    let setting =
        run_txn(engine, true, |tx| tx.get(keys::SETTING))?.ok_or(MetaError::NotFormatted)?;
    write_line(out, &json!({ "tessera_dump": DUMP_VERSION }))?;
    if let Some(line) = line_for(keys::SETTING, &setting)? {
        write_line(out, &line)?;
        stats.keys += 1;
    }
    // Inodes with no links left (deleted, still open in some mount) stay
    // out, with every key of theirs; keys of one inode are contiguous.
    let mut current: Option<(Ino, bool)> = None;
    let mut from: Vec<u8> = Vec::new();
    loop {
        let page = run_txn(engine, true, |tx| tx.scan(&from, &[0xff], PAGE))?;
        let Some((last, _)) = page.last() else {
            break;
        };
        from = last.clone();
        from.push(0);
        for (k, v) in &page {
            if k == keys::SETTING || k == crate::backup::BACKUP_KEY {
                continue;
            }
            if k.first() == Some(&b'A') && k.len() >= 10 {
                let ino = keys::be_u64(k, 1).unwrap_or(0);
                let keep = match current {
                    Some((i, keep)) if i == ino => keep,
                    _ => {
                        let attr = run_txn(engine, true, |tx| tx.get(&keys::attr(ino)))?;
                        let keep = match attr {
                            Some(a) => Attr::decode(&a)?.nlink > 0,
                            None => false,
                        };
                        current = Some((ino, keep));
                        keep
                    }
                };
                if !keep {
                    continue;
                }
                match k[9] {
                    b'I' => stats.inodes += 1,
                    b'D' => stats.entries += 1,
                    b'C' => stats.chunks += 1,
                    _ => {}
                }
            }
            if let Some(line) = line_for(k, v)? {
                write_line(out, &line)?;
                stats.keys += 1;
            }
        }
        if page.len() < PAGE {
            break;
        }
    }
    out.flush()
        .map_err(|e| MetaError::Engine(format!("writing the dump: {e}")))?;
    Ok(stats)
}

/// Write the keys of a dump into `engine`, which must hold no volume. The
/// settings go in last, so a load that stops half way leaves no volume
/// that looks usable.
pub fn load(engine: &dyn KvEngine, input: &mut dyn BufRead) -> Result<DumpStats> {
    if run_txn(engine, true, |tx| tx.get(keys::SETTING))?.is_some() {
        return Err(MetaError::Invalid(
            "the target already holds a volume; load into an empty database".into(),
        ));
    }
    let mut stats = DumpStats::default();
    let mut setting = None;
    let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(BATCH);
    let flush = |batch: &mut Vec<(Vec<u8>, Vec<u8>)>| -> Result<()> {
        run_txn(engine, false, |tx| {
            for (k, v) in batch.iter() {
                tx.set(k, v)?;
            }
            Ok(())
        })?;
        batch.clear();
        Ok(())
    };
    let mut first = true;
    for (n, text) in input.lines().enumerate() {
        let text = text.map_err(|e| MetaError::Engine(format!("reading the dump: {e}")))?;
        if text.trim().is_empty() {
            continue;
        }
        let line: Value =
            serde_json::from_str(&text).map_err(|e| corrupt(&format!("dump line {}", n + 1), e))?;
        if first {
            first = false;
            match line.get("tessera_dump").and_then(Value::as_u64) {
                Some(DUMP_VERSION) => continue,
                Some(v) => {
                    return Err(corrupt(
                        "dump",
                        format!("version {v} is not supported (this build reads {DUMP_VERSION})"),
                    ))
                }
                None => {
                    return Err(corrupt(
                        "dump",
                        "the first line is not a tessera dump header",
                    ))
                }
            }
        }
        let (k, v) = key_value(&line).map_err(|e| corrupt(&format!("dump line {}", n + 1), e))?;
        if k == keys::SETTING {
            setting = Some(v);
            continue;
        }
        if k.first() == Some(&b'A') && k.len() >= 10 {
            match k[9] {
                b'I' => stats.inodes += 1,
                b'D' => stats.entries += 1,
                b'C' => stats.chunks += 1,
                _ => {}
            }
        }
        stats.keys += 1;
        batch.push((k, v));
        if batch.len() >= BATCH {
            flush(&mut batch)?;
        }
    }
    if first {
        return Err(corrupt("dump", "the file is empty"));
    }
    let setting = setting.ok_or_else(|| corrupt("dump", "it has no volume settings line"))?;
    batch.push((keys::SETTING.to_vec(), setting));
    stats.keys += 1;
    flush(&mut batch)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::test_format;
    use crate::engines::MemoryEngine;
    use crate::{Ctx, Meta, MetaConfig, ROOT_INO};
    use std::sync::Arc;

    const CTX: Ctx = Ctx {
        uid: 1000,
        gid: 1000,
        pid: 1,
        umask: 0,
    };

    #[test]
    fn dump_load_dump_is_identical() {
        let src: Arc<dyn KvEngine> = Arc::new(MemoryEngine::default());
        let m = Meta::new(src.clone(), MetaConfig::default());
        m.init(&test_format()).expect("format");
        let (d, _) = m
            .mknod(&CTX, ROOT_INO, b"dir", FileType::Dir, 0o750, 0, None)
            .expect("dir");
        let (f, _) = m
            .mknod(
                &CTX,
                d,
                "naïve \u{1F600}".as_bytes(),
                FileType::File,
                0o640,
                0,
                None,
            )
            .expect("file");
        m.mknod(&CTX, d, b"\xff\xfe", FileType::File, 0o600, 0, None)
            .expect("non-utf8 name");
        m.mknod(
            &CTX,
            ROOT_INO,
            b"ln",
            FileType::Symlink,
            0o777,
            0,
            Some(b"dir/x"),
        )
        .expect("symlink");
        m.link(f, ROOT_INO, b"hard").expect("link");
        m.setxattr(f, b"user.k", b"\x00\x01bin", 0).expect("xattr");
        let id = m.new_slice_id().expect("id");
        let rec = SliceRecord {
            kind: SliceKind::Internal,
            pos: 0,
            id,
            size: 10,
            off: 0,
            len: 10,
        };
        m.write_slices(f, &[(0, rec)], 10).expect("data");
        let (gone, _) = m
            .mknod(&CTX, ROOT_INO, b"gone", FileType::File, 0o644, 0, None)
            .expect("gone");
        m.open_inode(gone);
        m.unlink(ROOT_INO, b"gone").expect("unlink while open");

        let mut first = Vec::new();
        let stats = dump(src.as_ref(), &mut first).expect("dump");
        let text = String::from_utf8(first.clone()).expect("utf-8");
        assert!(text.contains("\"naïve 😀\""), "{text}");
        assert!(text.contains("{\"hex\":\"fffe\"}"), "{text}");
        assert!(
            !text.contains(&format!("\"inode\":{gone},")),
            "unlinked-while-open stays out"
        );
        assert_eq!(stats.inodes, 5, "root, dir, file, non-utf8 file, symlink");

        let dst: Arc<dyn KvEngine> = Arc::new(MemoryEngine::default());
        let loaded = load(dst.as_ref(), &mut first.as_slice()).expect("load");
        assert_eq!(loaded, stats);
        let mut second = Vec::new();
        dump(dst.as_ref(), &mut second).expect("dump again");
        assert_eq!(String::from_utf8(second).expect("utf-8"), text);

        let copy = Meta::new(dst.clone(), MetaConfig::default());
        let (ino, attr) = copy.resolve("/dir/naïve 😀").expect("resolve");
        assert_eq!((ino, attr.mode, attr.nlink, attr.length), (f, 0o640, 2, 10));
        assert_eq!(copy.getxattr(f, b"user.k").expect("xattr"), b"\x00\x01bin");
        assert!(load(dst.as_ref(), &mut text.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("already holds a volume"));
        let bad = load(
            Arc::new(MemoryEngine::default()).as_ref(),
            &mut "{\"x\":1}\n".as_bytes(),
        );
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("not a tessera dump header"));
    }
}
