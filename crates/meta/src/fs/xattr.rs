//! Extended attributes, POSIX ACLs kept as xattrs included.

use super::*;

impl Meta {
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.read_txn(|tx| {
            get_attr(tx, ino)?;
            tx.get(&keys::xattr(ino, name))?.ok_or(MetaError::NoData)
        })
    }

    /// `flags`: XATTR_CREATE (1) or XATTR_REPLACE (2).
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        self.writable()?;
        if name.is_empty() || name.len() > 255 {
            return Err(MetaError::Range);
        }
        if value.len() > 65536 {
            return Err(MetaError::TooBig);
        }
        self.txn(|tx| {
            let mut a = get_attr(tx, ino)?;
            let key = keys::xattr(ino, name);
            let exists = tx.get(&key)?.is_some();
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(MetaError::Exists);
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(MetaError::NoData);
            }
            tx.set(&key, value)?;
            a.flags |= crate::attr::FLAG_XATTRS;
            a.touch_ctime(now());
            put_attr(tx, ino, &a)
        })
    }

    /// Set (`Some`) or remove (`None`) a POSIX ACL, keeping the mode in
    /// step: an access ACL sets the permission bits (and is not stored
    /// when it says no more than they do); a caller outside the file's
    /// group who is not root loses the setgid bit, as on a local file
    /// system. Removing an ACL that is not there succeeds.
    pub fn set_acl(
        &self,
        ctx: &Ctx,
        ino: Ino,
        kind: acl::Kind,
        value: Option<&[u8]>,
    ) -> Result<Attr> {
        self.writable()?;
        let parsed = value.map(acl::Acl::decode).transpose()?;
        if kind == acl::Kind::Access && parsed.as_ref().is_some_and(|a| a.is_empty()) {
            return Err(MetaError::Invalid("an access ACL with no entries".into()));
        }
        // An empty default ACL is how setfacl -k may say "remove".
        let parsed = parsed.filter(|a| !a.is_empty());
        self.txn(|tx| {
            let mut a = get_attr(tx, ino)?;
            let keep = match (&parsed, kind) {
                (Some(_), acl::Kind::Default) if a.typ != FileType::Dir => {
                    return Err(MetaError::Access);
                }
                (Some(acl), acl::Kind::Access) => {
                    a.mode = (a.mode & !0o777) | acl.mode_bits();
                    if ctx.uid != 0 && ctx.gid != a.gid {
                        a.mode &= !0o2000;
                    }
                    (!acl.is_minimal()).then_some(acl)
                }
                (keep, _) => keep.as_ref(),
            };
            let key = keys::xattr(ino, kind.name());
            let flag = match kind {
                acl::Kind::Access => crate::attr::FLAG_ACL_ACCESS,
                acl::Kind::Default => crate::attr::FLAG_ACL_DEFAULT,
            };
            match keep {
                Some(acl) => {
                    tx.set(&key, &acl.encode())?;
                    a.flags |= crate::attr::FLAG_XATTRS | flag;
                }
                None => {
                    tx.delete(&key)?;
                    a.flags &= !flag;
                }
            }
            a.touch_ctime(now());
            put_attr(tx, ino, &a)?;
            Ok(a)
        })
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.read_txn(|tx| {
            get_attr(tx, ino)?;
            let p = keys::xattr_prefix(ino);
            Ok(scan_prefix(tx, &p)?
                .into_iter()
                .map(|(k, _)| k[p.len()..].to_vec())
                .collect())
        })
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.writable()?;
        self.txn(|tx| {
            let mut a = get_attr(tx, ino)?;
            let key = keys::xattr(ino, name);
            if tx.get(&key)?.is_none() {
                return Err(MetaError::NoData);
            }
            tx.delete(&key)?;
            a.touch_ctime(now());
            put_attr(tx, ino, &a)
        })
    }
}
