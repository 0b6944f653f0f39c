//! Extended attributes and POSIX ACLs, and the statfs of the volume (or
//! of a directory quota).

use super::*;

impl Vfs {
    /// statfs as seen from `ino`: the volume's figures, or inside a
    /// directory with a quota, that quota's.
    pub fn statfs(&self, ino: Ino) -> Result<StatFs> {
        self.metrics().op("statfs");
        let ino = if internal::is_internal(ino) {
            tessera_meta::ROOT_INO
        } else {
            ino
        };
        Ok(self.meta.statfs_in(ino)?)
    }

    // `.stats` has no extended attributes and takes none (it has no inode in
    // the engine: asking there would say ENOENT, and `ls -l`, which reads
    // its security attributes, would report the file missing).

    /// Whether the volume keeps POSIX ACLs (the mount then asks the kernel
    /// to enforce them).
    pub fn acl_enabled(&self) -> bool {
        self.config.acl
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.acl_kind(name)?;
        if internal::is_internal(ino) {
            return Err(VfsError::new(libc::ENODATA, ".stats has no attributes"));
        }
        if name == b"security.capability"
            && self
                .open_file(ino)
                .is_some_and(|of| of.no_xattrs.load(Ordering::Relaxed))
        {
            return Err(VfsError::new(libc::ENODATA, "no such attribute"));
        }
        Ok(self.meta.getxattr(ino, name)?)
    }

    /// `ctx` matters to ACLs only: setting one as a user outside the
    /// file's group clears its setgid bit.
    pub fn setxattr(
        &self,
        ctx: &Ctx,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        let acl = self.acl_kind(name)?;
        if internal::is_internal(ino) {
            return Err(VfsError::new(libc::EPERM, ".stats is read-only"));
        }
        self.writable()?;
        if let Some(of) = self.open_file(ino) {
            of.no_xattrs.store(false, Ordering::Relaxed);
        }
        match acl {
            Some(kind) => self.meta.set_acl(ctx, ino, kind, Some(value)).map(drop),
            None => self.meta.setxattr(ino, name, value, flags),
        }
        .map_err(VfsError::from)
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        if internal::is_internal(ino) {
            return Ok(Vec::new());
        }
        Ok(self.meta.listxattr(ino)?)
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        let acl = self.acl_kind(name)?;
        if internal::is_internal(ino) {
            return Err(VfsError::new(libc::EPERM, ".stats is read-only"));
        }
        self.writable()?;
        match acl {
            Some(kind) => self.meta.set_acl(&Ctx::ROOT, ino, kind, None).map(drop),
            None => self.meta.removexattr(ino, name),
        }
        .map_err(VfsError::from)
    }

    /// Which POSIX ACL an xattr name is, if any; refused on a volume
    /// without ACLs. Stored as plain xattrs they did harm: `cp -a` sets a
    /// copy's permissions by writing an ACL equal to its mode, which then
    /// changed nothing (copies kept mode 0600). EOPNOTSUPP makes tools
    /// fall back to chmod.
    pub(crate) fn acl_kind(&self, name: &[u8]) -> Result<Option<tessera_meta::acl::Kind>> {
        if !name.starts_with(b"system.posix_acl_") {
            return Ok(None);
        }
        match tessera_meta::acl::Kind::of_name(name) {
            Some(kind) if self.config.acl => Ok(Some(kind)),
            Some(_) => Err(VfsError::new(
                libc::EOPNOTSUPP,
                "POSIX ACLs are not enabled on this volume (format --enable-acl)",
            )),
            None => Err(VfsError::new(libc::EOPNOTSUPP, "not a POSIX ACL name")),
        }
    }
}
