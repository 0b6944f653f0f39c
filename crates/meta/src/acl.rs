//! POSIX access control lists: the kernel's xattr encoding of them, the
//! permission bits they imply, and the rules that tie them to the mode
//! (chmod rewrites the ACL, setting an ACL rewrites the mode, a new node
//! inherits its directory's default ACL). The kernel checks access itself
//! (`default_permissions` with FUSE_POSIX_ACL); the engine keeps the ACL
//! and the mode consistent inside one transaction.

use crate::{MetaError, Result};

/// The xattr that holds a node's access ACL.
pub const ACCESS: &[u8] = b"system.posix_acl_access";
/// The xattr that holds a directory's default ACL (what new nodes in it
/// inherit).
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

/// Which of the two ACLs an xattr name is, if either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Access,
    Default,
}

impl Kind {
    pub fn of_name(name: &[u8]) -> Option<Kind> {
        match name {
            ACCESS => Some(Kind::Access),
            DEFAULT => Some(Kind::Default),
            _ => None,
        }
    }

    pub fn name(self) -> &'static [u8] {
        match self {
            Kind::Access => ACCESS,
            Kind::Default => DEFAULT,
        }
    }
}

const XATTR_VERSION: u32 = 2;
const HEADER_LEN: usize = 4;
const ENTRY_LEN: usize = 8;
/// The id of entries that name no user or group (owner, mask, other).
const UNDEFINED_ID: u32 = u32::MAX;

/// Entry tags, in the order a valid ACL lists them.
pub const USER_OBJ: u16 = 0x01;
pub const USER: u16 = 0x02;
pub const GROUP_OBJ: u16 = 0x04;
pub const GROUP: u16 = 0x08;
pub const MASK: u16 = 0x10;
pub const OTHER: u16 = 0x20;

/// Only USER and GROUP entries name an id; the others carry UNDEFINED_ID.
fn named_id(tag: u16, id: u32) -> u32 {
    if matches!(tag, USER | GROUP) {
        id
    } else {
        UNDEFINED_ID
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub tag: u16,
    /// rwx as 4|2|1.
    pub perm: u16,
    /// The user or group of a USER or GROUP entry.
    pub id: u32,
}

/// A valid ACL: entries sorted by tag then id, one owner, group-owner and
/// other entry, distinct named ids, and a mask whenever a name appears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// Decode the kernel's xattr form, refusing anything that is not a
    /// valid ACL (EINVAL), as the kernel does.
    pub fn decode(raw: &[u8]) -> Result<Acl> {
        let bad = |why: &str| MetaError::Invalid(format!("POSIX ACL: {why}"));
        if raw.len() < HEADER_LEN || (raw.len() - HEADER_LEN) % ENTRY_LEN != 0 {
            return Err(bad("the value is not a whole number of entries"));
        }
        let version = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        if version != XATTR_VERSION {
            return Err(bad("unknown version"));
        }
        let entries = raw[HEADER_LEN..]
            .chunks_exact(ENTRY_LEN)
            .map(|e| {
                let tag = u16::from_le_bytes([e[0], e[1]]);
                Entry {
                    tag,
                    perm: u16::from_le_bytes([e[2], e[3]]),
                    id: named_id(tag, u32::from_le_bytes([e[4], e[5], e[6], e[7]])),
                }
            })
            .collect();
        let acl = Acl { entries };
        acl.validate().map_err(bad)?;
        Ok(acl)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * self.entries.len());
        out.extend_from_slice(&XATTR_VERSION.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&named_id(e.tag, e.id).to_le_bytes());
        }
        out
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn validate(&self) -> std::result::Result<(), &'static str> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let (mut owner, mut group, mut other, mut mask, mut named) = (0, 0, 0, 0, 0);
        let mut previous: Option<(u16, u32)> = None;
        for e in &self.entries {
            if e.perm & !7 != 0 {
                return Err("a permission outside rwx");
            }
            match e.tag {
                USER_OBJ => owner += 1,
                GROUP_OBJ => group += 1,
                OTHER => other += 1,
                MASK => mask += 1,
                USER | GROUP => named += 1,
                _ => return Err("an unknown entry tag"),
            }
            let key = (e.tag, e.id);
            if previous.is_some_and(|p| p >= key) {
                return Err("entries out of order or repeated");
            }
            previous = Some(key);
        }
        if owner != 1 || group != 1 || other != 1 {
            return Err("it needs exactly one owner, owning-group and other entry");
        }
        if named > 0 && mask == 0 {
            return Err("named users or groups need a mask entry");
        }
        Ok(())
    }

    fn find(&self, tag: u16) -> Option<&Entry> {
        self.entries.iter().find(|e| e.tag == tag)
    }

    fn perm_of(&mut self, tag: u16) -> Option<&mut u16> {
        self.entries
            .iter_mut()
            .find(|e| e.tag == tag)
            .map(|e| &mut e.perm)
    }

    /// The permission bits (0o777) the ACL implies: owner, mask (or the
    /// owning group when there is no mask), other.
    pub fn mode_bits(&self) -> u16 {
        let perm = |tag| self.find(tag).map_or(0, |e| e.perm & 7);
        let group = self.find(MASK).map_or(perm(GROUP_OBJ), |e| e.perm & 7);
        (perm(USER_OBJ) << 6) | (group << 3) | perm(OTHER)
    }

    /// Whether the ACL says no more than the permission bits do (owner,
    /// owning group and other only): such an ACL is not stored, the mode
    /// is the whole truth. A mask alone is kept, as the kernel keeps it:
    /// the owning group's own entry may differ from the mask the mode
    /// shows.
    pub fn is_minimal(&self) -> bool {
        !self
            .entries
            .iter()
            .any(|e| matches!(e.tag, USER | GROUP | MASK))
    }

    /// chmod: the owner, mask (or owning group) and other entries take the
    /// new bits; named entries keep theirs, limited by the new mask.
    pub fn chmod(&mut self, mode: u16) {
        if let Some(p) = self.perm_of(USER_OBJ) {
            *p = (mode >> 6) & 7;
        }
        let group_tag = if self.find(MASK).is_some() {
            MASK
        } else {
            GROUP_OBJ
        };
        if let Some(p) = self.perm_of(group_tag) {
            *p = (mode >> 3) & 7;
        }
        if let Some(p) = self.perm_of(OTHER) {
            *p = mode & 7;
        }
    }

    /// What a node created with permission bits `mode` in a directory with
    /// this default ACL gets: its access ACL (the default narrowed by the
    /// mode; the umask does not apply) and the permission bits it implies.
    pub fn inherit(&self, mode: u16) -> (Acl, u16) {
        let mut acl = self.clone();
        let mut bits = mode & 0o777;
        if let Some(p) = acl.perm_of(USER_OBJ) {
            *p &= (bits >> 6) & 7;
            bits = (bits & !0o700) | (*p << 6);
        }
        if let Some(p) = acl.perm_of(OTHER) {
            *p &= bits & 7;
            bits = (bits & !0o007) | *p;
        }
        let group_tag = if acl.find(MASK).is_some() {
            MASK
        } else {
            GROUP_OBJ
        };
        if let Some(p) = acl.perm_of(group_tag) {
            *p &= (bits >> 3) & 7;
            bits = (bits & !0o070) | (*p << 3);
        }
        (acl, bits)
    }

    /// Whether a caller with `uid` and `gid` (supplementary groups are not
    /// known here) gets every bit of `want` (rwx as 4|2|1) on a node owned
    /// by `owner`:`group`, by the kernel's evaluation order.
    pub fn permits(&self, owner: u32, group: u32, uid: u32, gid: u32, want: u16) -> bool {
        let mask = self.find(MASK).map_or(7, |e| e.perm);
        let grants = |perm: u16| perm & want == want;
        let mut in_a_group = false;
        for e in &self.entries {
            match e.tag {
                USER_OBJ if uid == owner => return grants(e.perm),
                USER if e.id == uid => return grants(e.perm & mask),
                GROUP_OBJ if gid == group => {
                    in_a_group = true;
                    if grants(e.perm & mask) {
                        return true;
                    }
                }
                GROUP if e.id == gid => {
                    in_a_group = true;
                    if grants(e.perm & mask) {
                        return true;
                    }
                }
                OTHER => return !in_a_group && grants(e.perm),
                _ => {}
            }
        }
        false
    }
}

/// Whether a caller (`uid`, `gid`; root always) has the `want` bits (4
/// read, 2 write, 1 search) on a node with `attr`: by its access ACL when
/// it has one, else by its mode bits. Supplementary groups are not known
/// here, so access only through one of them is refused.
pub fn allows(attr: &crate::Attr, access: Option<&Acl>, uid: u32, gid: u32, want: u16) -> bool {
    if uid == 0 {
        return true;
    }
    if let Some(acl) = access {
        return acl.permits(attr.uid, attr.gid, uid, gid, want);
    }
    let bits = if uid == attr.uid {
        (attr.mode >> 6) & 7
    } else if gid == attr.gid {
        (attr.mode >> 3) & 7
    } else {
        attr.mode & 7
    };
    bits & want == want
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl {
            entries: entries
                .iter()
                .map(|&(tag, perm, id)| Entry {
                    tag,
                    perm,
                    id: named_id(tag, id),
                })
                .collect(),
        }
    }

    #[test]
    fn the_xattr_form_round_trips_and_invalid_lists_are_refused() {
        let a = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 4, 1000),
            (GROUP_OBJ, 4, 0),
            (GROUP, 6, 50),
            (MASK, 6, 0),
            (OTHER, 0, 0),
        ]);
        let raw = a.encode();
        assert_eq!(raw.len(), 4 + 6 * 8);
        assert_eq!(Acl::decode(&raw).expect("valid"), a);

        for bad in [
            // no mask beside a named user
            acl(&[
                (USER_OBJ, 6, 0),
                (USER, 4, 1),
                (GROUP_OBJ, 4, 0),
                (OTHER, 0, 0),
            ]),
            // two owner entries
            acl(&[
                (USER_OBJ, 6, 0),
                (USER_OBJ, 6, 0),
                (GROUP_OBJ, 4, 0),
                (OTHER, 0, 0),
            ]),
            // the same named user twice
            acl(&[
                (USER_OBJ, 6, 0),
                (USER, 4, 7),
                (USER, 2, 7),
                (GROUP_OBJ, 4, 0),
                (MASK, 6, 0),
                (OTHER, 0, 0),
            ]),
            // out of order
            acl(&[(GROUP_OBJ, 4, 0), (USER_OBJ, 6, 0), (OTHER, 0, 0)]),
            // no other entry
            acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0)]),
            // a bit beyond rwx
            acl(&[(USER_OBJ, 8, 0), (GROUP_OBJ, 4, 0), (OTHER, 0, 0)]),
        ] {
            let e = Acl::decode(&bad.encode()).expect_err("invalid");
            assert!(matches!(e, MetaError::Invalid(_)), "{bad:?}: {e:?}");
        }
        assert!(Acl::decode(b"\x02\0\0\0\x01").is_err(), "a torn entry");
        assert!(Acl::decode(b"\x01\0\0\0").is_err(), "version 1");
        assert!(Acl::decode(b"\x02\0\0\0").expect("no entries").is_empty());
    }

    #[test]
    fn mode_bits_come_from_the_mask_when_there_is_one() {
        let plain = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0), (OTHER, 1, 0)]);
        assert_eq!(plain.mode_bits(), 0o751);
        assert!(plain.is_minimal());
        let masked = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 4, 0),
            (MASK, 2, 0),
            (OTHER, 0, 0),
        ]);
        assert_eq!(masked.mode_bits(), 0o620);
        assert!(!masked.is_minimal());
        let mask_only = acl(&[
            (USER_OBJ, 6, 0),
            (GROUP_OBJ, 0, 0),
            (MASK, 4, 0),
            (OTHER, 0, 0),
        ]);
        assert_eq!(mask_only.mode_bits(), 0o640);
        assert!(
            !mask_only.is_minimal(),
            "the group's own entry is not in the mode"
        );
    }

    #[test]
    fn chmod_rewrites_owner_mask_and_other_but_not_named_entries() {
        let mut a = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 4, 0),
            (MASK, 7, 0),
            (OTHER, 4, 0),
        ]);
        a.chmod(0o750);
        assert_eq!(a.mode_bits(), 0o750);
        assert_eq!(a.find(USER).map(|e| e.perm), Some(7));
        assert_eq!(a.find(GROUP_OBJ).map(|e| e.perm), Some(4), "the mask moved");
        let mut plain = acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (OTHER, 4, 0)]);
        plain.chmod(0o701);
        assert_eq!(plain.mode_bits(), 0o701);
    }

    #[test]
    fn inheritance_narrows_the_default_by_the_requested_mode() {
        let default = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 5, 0),
        ]);
        // open(O_CREAT, 0666): no execute bits anywhere the mode withholds.
        let (a, bits) = default.inherit(0o666);
        assert_eq!(bits, 0o664);
        assert_eq!(a.mode_bits(), 0o664);
        assert_eq!(
            a.find(USER).map(|e| e.perm),
            Some(7),
            "named, limited by the mask"
        );
        assert!(!a.permits(0, 0, 1000, 1000, 1), "the mask withholds x");
        assert!(a.permits(0, 0, 1000, 1000, 6));
        // mkdir(0777) keeps the default as it is.
        let (a, bits) = default.inherit(0o777);
        assert_eq!((a.clone(), bits), (default.clone(), 0o775));
    }

    #[test]
    fn permission_follows_the_kernel_order() {
        let a = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 4, 1000),
            (USER, 0, 1001),
            (GROUP_OBJ, 4, 0),
            (GROUP, 6, 50),
            (MASK, 4, 0),
            (OTHER, 2, 0),
        ]);
        let (owner, group) = (10, 20);
        assert!(
            a.permits(owner, group, 10, 99, 6),
            "owner: its own entry, no mask"
        );
        assert!(a.permits(owner, group, 1000, 99, 4), "named user");
        assert!(
            !a.permits(owner, group, 1001, 99, 4),
            "a named user with nothing"
        );
        assert!(
            !a.permits(owner, group, 1001, 99, 2),
            "not other's bits either"
        );
        assert!(
            !a.permits(owner, group, 5, 50, 2),
            "a named group limited by the mask"
        );
        assert!(a.permits(owner, group, 5, 50, 4));
        assert!(
            !a.permits(owner, group, 5, 20, 2),
            "group members never fall to other"
        );
        assert!(a.permits(owner, group, 5, 6, 2), "other");
    }
}
