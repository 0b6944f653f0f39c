//! Clones (`tessera clone`): a file, symlink or directory tree copied as
//! metadata only. A cloned file gets its own inode with the source's chunk
//! lists; every slice they point at gains a reference (`K` keys), so the
//! blocks stay while either copy needs them and both change independently
//! afterwards (writes make new slices; truncate and delete drop references).
//!
//! A file is cloned in one transaction. A directory tree is built under a
//! hidden name in the destination and renamed into place at the end
//! (refusing to replace anything), so the destination appears whole or not
//! at all; a failure half way removes what was built.

use super::*;

/// What a clone made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloneReport {
    /// Inodes created (files, directories, symlinks).
    pub inodes: u64,
    /// Bytes of file data now shared (file lengths).
    pub bytes: u64,
}

/// Whether `ctx` has the `want` bits (4 read, 2 write, 1 search) on a node:
/// its access ACL when it has one, else its mode bits; root always.
pub(super) fn may(tx: &mut dyn KvTxn, ctx: &Ctx, ino: Ino, a: &Attr, want: u16) -> Result<bool> {
    let access = if ctx.uid != 0 && a.flags & crate::attr::FLAG_ACL_ACCESS != 0 {
        tx.get(&keys::xattr(ino, acl::ACCESS))?
            .map(|raw| acl::Acl::decode(&raw))
            .transpose()?
    } else {
        None
    };
    Ok(acl::allows(a, access.as_ref(), ctx.uid, ctx.gid, want))
}

/// The same key for another inode (`A` ino kind rest).
fn rekey(key: &[u8], ino: Ino) -> Vec<u8> {
    let mut k = key.to_vec();
    if k.len() >= 9 {
        k[1..9].copy_from_slice(&ino.to_be_bytes());
    }
    k
}

impl Meta {
    /// Clone one node (a file with its data, a symlink, or a directory
    /// without its entries) as `name` in `parent`, in one transaction.
    /// Without `preserve` the clone belongs to the caller, its mode is the
    /// source's less the umask and set-id bits, and its times are now; with
    /// it, owner, mode and times are kept (another owner only for root).
    pub fn clone_node(
        &self,
        ctx: &Ctx,
        src: Ino,
        parent: Ino,
        name: &[u8],
        preserve: bool,
    ) -> Result<(Ino, Attr)> {
        self.writable()?;
        check_new_name(parent, name)?;
        if self.limits_apply() {
            self.check_quota(parent, usage_of(&self.getattr(src)?), 1)?;
        }
        let ino = self.new_inode()?;
        let attr = self.txn(|tx| {
            let sa = get_attr(tx, src)?;
            if sa.nlink == 0 {
                return Err(MetaError::NotFound);
            }
            let want = if sa.typ == FileType::Dir { 4 | 1 } else { 4 };
            if sa.typ != FileType::Symlink && !may(tx, ctx, src, &sa, want)? {
                return Err(MetaError::Access);
            }
            if preserve && ctx.uid != 0 && sa.uid != ctx.uid {
                return Err(MetaError::Perm);
            }
            let mut p = parent_for_new_entry(tx, parent, name)?;
            if !may(tx, ctx, parent, &p, 2 | 1)? {
                return Err(MetaError::Access);
            }
            let t = now();
            let mut a = sa;
            a.parent = parent;
            a.nlink = if sa.typ == FileType::Dir { 2 } else { 1 };
            a.ctime = t.0;
            a.ctime_ns = t.1;
            if !preserve {
                a.uid = ctx.uid;
                a.gid = if p.mode & 0o2000 != 0 { p.gid } else { ctx.gid };
                if sa.typ != FileType::Symlink {
                    a.mode = sa.mode & 0o1777 & !(ctx.umask as u16 & 0o777);
                }
                (a.mtime, a.mtime_ns, a.atime, a.atime_ns) = (t.0, t.1, t.0, t.1);
            }
            match sa.typ {
                FileType::File => {
                    for (k, v) in scan_prefix(tx, &keys::chunk_prefix(src))? {
                        for r in SliceRecord::decode_all(&v)? {
                            add_slice_ref(tx, &r)?;
                        }
                        tx.set(&rekey(&k, ino), &v)?;
                    }
                }
                FileType::Symlink => {
                    let target = tx.get(&keys::symlink(src))?.unwrap_or_default();
                    tx.set(&keys::symlink(ino), &target)?;
                }
                FileType::Dir => {
                    a.length = 4096;
                    p.nlink += 1;
                }
                _ => {}
            }
            // Extended attributes, ACLs among them, go with the node.
            for (k, v) in scan_prefix(tx, &keys::xattr_prefix(src))? {
                tx.set(&rekey(&k, ino), &v)?;
            }
            p.touch_mtime(t);
            put_attr(tx, parent, &p)?;
            put_attr(tx, ino, &a)?;
            put_dentry(tx, parent, name, ino, sa.typ)?;
            account(parent, usage_of(&a), 1);
            Ok(a)
        })?;
        Ok((ino, attr))
    }

    /// Clone `src` (any node; a directory with everything under it) as
    /// `name` in `parent`.
    pub fn clone_tree(
        &self,
        ctx: &Ctx,
        src: Ino,
        parent: Ino,
        name: &[u8],
        preserve: bool,
    ) -> Result<CloneReport> {
        let top = self.getattr(src)?;
        if top.typ != FileType::Dir {
            let (_, a) = self.clone_node(ctx, src, parent, name, preserve)?;
            return Ok(CloneReport {
                inodes: 1,
                bytes: if a.typ == FileType::File { a.length } else { 0 },
            });
        }
        if self.read_txn(|tx| Self::is_ancestor(tx, src, parent))? {
            return Err(MetaError::Invalid(
                "cannot clone a directory into itself".into(),
            ));
        }
        check_name(name)?;
        let hidden = format!(".tessera-clone-{src}-{}", std::process::id()).into_bytes();
        let (root, _) = self.clone_node(ctx, src, parent, &hidden, preserve)?;
        let mut report = CloneReport {
            inodes: 1,
            bytes: 0,
        };
        let built = self.clone_children(ctx, src, root, preserve, &mut report);
        let placed = built.and_then(|()| {
            self.rename(parent, &hidden, parent, name, libc::RENAME_NOREPLACE)
                .map(|_| ())
        });
        if let Err(e) = placed {
            let root = Ctx {
                uid: 0,
                gid: 0,
                pid: ctx.pid,
                umask: 0,
            };
            if let Err(cleanup) = self.remove_tree(&root, parent, &hidden) {
                tracing::warn!(error = %cleanup, "cannot remove a half-built clone");
            }
            return Err(e);
        }
        Ok(report)
    }

    /// Clone every entry under directory `src` into directory `dst`.
    fn clone_children(
        &self,
        ctx: &Ctx,
        src: Ino,
        dst: Ino,
        preserve: bool,
        report: &mut CloneReport,
    ) -> Result<()> {
        let mut todo = vec![(src, dst)];
        while let Some((from, to)) = todo.pop() {
            for e in self.readdir(from, false)? {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                let (ino, a) = self.clone_node(ctx, e.ino, to, &e.name, preserve)?;
                report.inodes += 1;
                match a.typ {
                    FileType::Dir => todo.push((e.ino, ino)),
                    FileType::File => report.bytes += a.length,
                    _ => {}
                }
            }
        }
        Ok(())
    }
}
