//! The distributed cache group: the disks and memory of many nodes pooled
//! into one block cache.
//!
//! * [`address`]: valid group names and members' listen addresses.
//! * [`placement`]: which member owns a block (weighted rendezvous hashing).
//! * [`group`]: membership through the metadata engine (records with a
//!   heartbeat), the current and the previous view.
//! * [`proto`]: the authenticated wire protocol, with CRCs end to end.
//! * [`server`]: a member serving its cache to peers (sendfile from disk).
//! * [`client`]: pooled connections to peers, deadlines, and peers marked
//!   down after a failure so readers fall back to object storage.
//! * [`tls`]: optional TLS between members.
//!
//! The data path (`tessera-chunk`) asks a block's owner before object
//! storage and serves its own cache through [`server::BlockSource`].

pub mod address;
pub mod client;
pub mod group;
pub mod placement;
pub mod proto;
pub mod server;
pub mod tls;

pub use address::{check_group_name, listen_addr, AddressError};
pub use client::{Answer, PeerError, PeerTimeouts, Peers};
pub use group::{Group, GroupConfig, Usage};
pub use placement::Member;
pub use proto::{Op, Secret};
pub use server::{BlockSource, Held, Server};
pub use tls::Tls;
