//! etcd engine: `etcd://[user:pass@]host1:2379,host2:2379/prefix`.
//!
//! Every key lives under `prefix/`. Transactions are optimistic, in the
//! style of etcd's own software transactional memory: the first read fixes a
//! revision and every later read is served at it (one consistent snapshot);
//! writes are buffered locally and visible to the transaction's own reads;
//! the commit is one etcd Txn that compares the mod revision of every key
//! read (0 for keys that were absent) and, for every range scanned, that no
//! key in it changed after the snapshot. A failed compare is a conflict,
//! retried by `run_txn`. Read-only transactions need no commit at all.
//!
//! etcd refuses a Txn with more than `--max-txn-ops` compares or writes
//! (128 by default); volumes with large directories want it raised.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp};

use crate::kv::{prefix_end, KvEngine, KvTxn};
use crate::{MetaError, Result};

const TIMEOUT: Duration = Duration::from_secs(5);

pub struct EtcdEngine {
    /// Drives the client's connections; callers block on it from their own
    /// threads.
    rt: tokio::runtime::Runtime,
    kv: KvClient,
    prefix: Vec<u8>,
    shown: String,
}

fn engine_err(e: etcd_client::Error) -> MetaError {
    use etcd_client::Error as E;
    match &e {
        E::GRpcStatus(s) if s.code() == tonic::Code::DeadlineExceeded => {
            MetaError::Engine(format!(
                "etcd did not answer within {}s (timed out: {e})",
                TIMEOUT.as_secs()
            ))
        }
        E::GRpcStatus(s) if s.code() == tonic::Code::Unavailable => {
            MetaError::Engine(format!("lost the connection to etcd: {e}"))
        }
        E::TransportError(_) | E::IoError(_) => {
            MetaError::Engine(format!("lost the connection to etcd: {e}"))
        }
        _ => MetaError::Engine(format!("etcd: {e}")),
    }
}

/// Endpoints, credentials and key prefix of an `etcd://` URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    endpoints: Vec<String>,
    user: Option<(String, String)>,
    prefix: String,
}

fn parse(url: &str) -> std::result::Result<Target, String> {
    let rest = url
        .strip_prefix("etcd://")
        .ok_or("expected etcd://host:2379[,host:2379]/prefix")?;
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, rest),
    };
    let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix
        .split('?')
        .next()
        .unwrap_or_default()
        .trim_matches('/');
    if prefix.is_empty() {
        return Err(
            "the key prefix is missing: etcd://host:2379/PREFIX (keys of the volume live under it)"
                .into(),
        );
    }
    let endpoints: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("http://{h}"))
        .collect();
    if endpoints.is_empty() {
        return Err("no etcd endpoint: etcd://host:2379/prefix".into());
    }
    let user = auth.map(|a| match a.split_once(':') {
        Some((u, p)) => (u.to_string(), p.to_string()),
        None => (a.to_string(), String::new()),
    });
    Ok(Target {
        endpoints,
        user,
        prefix: prefix.to_string(),
    })
}

impl EtcdEngine {
    pub fn open(url: &str, shown: &str) -> Result<Self> {
        let target = parse(url).map_err(|reason| MetaError::BadUrl {
            url: shown.to_string(),
            reason,
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tessera-etcd")
            .enable_all()
            .build()
            .map_err(|e| MetaError::Engine(format!("etcd runtime: {e}")))?;
        let mut options = ConnectOptions::new()
            .with_timeout(TIMEOUT)
            .with_connect_timeout(TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), TIMEOUT);
        if let Some((u, p)) = &target.user {
            options = options.with_user(u.clone(), p.clone());
        }
        let client = rt
            .block_on(etcd_client::Client::connect(
                &target.endpoints,
                Some(options),
            ))
            .map_err(|e| MetaError::Engine(format!("cannot reach etcd at {shown}: {e}")))?;
        let mut kv = client.kv_client();
        // connect() is lazy about the first request: ask once so a wrong
        // address fails here, with the URL in the message.
        rt.block_on(kv.get(b"\0".to_vec(), None))
            .map_err(|e| MetaError::Engine(format!("cannot reach etcd at {shown}: {e}")))?;
        let mut prefix = target.prefix.into_bytes();
        prefix.push(b'/');
        Ok(EtcdEngine {
            rt,
            kv,
            prefix,
            shown: shown.to_string(),
        })
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }
}

/// A key (with the prefix), its value and its mod revision.
type Row = (Vec<u8>, Vec<u8>, i64);

struct EtcdTxn<'a> {
    engine: &'a EtcdEngine,
    kv: KvClient,
    /// Snapshot revision, fixed by the first read (0: none yet).
    rev: i64,
    /// Mod revision of every key read (full key; 0 when it was absent).
    reads: HashMap<Vec<u8>, i64>,
    /// Ranges scanned, as full keys `[begin, end)`.
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
    /// Buffered writes by user key: Some(value) sets, None deletes.
    writes: super::WriteBuffer,
}

impl EtcdTxn<'_> {
    fn range(&mut self, begin: Vec<u8>, end: Option<Vec<u8>>, limit: i64) -> Result<Vec<Row>> {
        let mut opts = GetOptions::new().with_limit(limit);
        if let Some(end) = end {
            opts = opts.with_range(end);
        }
        if self.rev > 0 {
            opts = opts.with_revision(self.rev);
        }
        let resp = self
            .engine
            .rt
            .block_on(self.kv.get(begin, Some(opts)))
            .map_err(engine_err)?;
        if self.rev == 0 {
            self.rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.mod_revision()))
            .collect())
    }
}

impl KvTxn for EtcdTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        let full = self.engine.full(key);
        let found = self.range(full.clone(), None, 0)?;
        let (value, rev) = match found.into_iter().next() {
            Some((_, v, r)) => (Some(v), r),
            None => (None, 0),
        };
        self.reads.entry(full).or_insert(rev);
        Ok(value)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.writes.insert(key.to_vec(), None);
        Ok(())
    }

    fn scan(&mut self, begin: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        // Buffered writes in the range may hide or replace what the server
        // returns; ask for that many more so `limit` still fills.
        let shadowed = self.writes.range(begin.to_vec()..end.to_vec()).count();
        let want = limit.saturating_add(shadowed);
        let server_limit = if want == usize::MAX {
            0
        } else {
            i64::try_from(want).unwrap_or(0)
        };
        let (fb, fe) = (self.engine.full(begin), self.engine.full(end));
        let rows = self.range(fb.clone(), Some(fe.clone()), server_limit)?;
        // Only the part of the range the server walked is depended upon.
        let covered_end = match rows.last() {
            Some((k, _, _)) if server_limit > 0 && rows.len() as i64 == server_limit => {
                let mut e = k.clone();
                e.push(0);
                e
            }
            _ => fe,
        };
        self.ranges.push((fb, covered_end));
        let mut found = BTreeMap::new();
        for (k, v, rev) in rows {
            let user = k[self.engine.prefix.len()..].to_vec();
            self.reads.entry(k).or_insert(rev);
            found.insert(user, v);
        }
        Ok(super::overlay_writes(
            found,
            &self.writes,
            begin,
            end,
            limit,
        ))
    }
}

impl KvEngine for EtcdEngine {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn run_once(
        &self,
        _read_only: bool,
        f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>,
    ) -> Result<()> {
        let mut tx = EtcdTxn {
            engine: self,
            kv: self.kv.clone(),
            rev: 0,
            reads: HashMap::new(),
            ranges: Vec::new(),
            writes: BTreeMap::new(),
        };
        let outcome = f(&mut tx).and_then(|()| {
            if tx.writes.is_empty() {
                return Ok(());
            }
            let mut compares: Vec<Compare> = tx
                .reads
                .iter()
                .map(|(k, rev)| Compare::mod_revision(k.clone(), CompareOp::Equal, *rev))
                .collect();
            if tx.rev > 0 {
                for (b, e) in &tx.ranges {
                    compares.push(
                        Compare::mod_revision(b.clone(), CompareOp::Less, tx.rev + 1)
                            .with_range(e.clone()),
                    );
                }
            }
            let ops: Vec<TxnOp> = tx
                .writes
                .iter()
                .map(|(k, w)| match w {
                    Some(v) => TxnOp::put(self.full(k), v.clone(), None),
                    None => TxnOp::delete(self.full(k), None),
                })
                .collect();
            let resp = self
                .rt
                .block_on(tx.kv.txn(Txn::new().when(compares).and_then(ops)))
                .map_err(engine_err)?;
            if resp.succeeded() {
                Ok(())
            } else {
                Err(MetaError::Conflict(1))
            }
        });
        outcome.map_err(|e| super::located(e, &self.shown))
    }

    fn reset(&self) -> Result<()> {
        let mut kv = self.kv.clone();
        let opts = etcd_client::DeleteOptions::new().with_range(prefix_end(&self.prefix));
        self.rt
            .block_on(kv.delete(self.prefix.clone(), Some(opts)))
            .map_err(engine_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse("etcd://a:2379,b:2379/vol").expect("parse"),
            Target {
                endpoints: vec!["http://a:2379".into(), "http://b:2379".into()],
                user: None,
                prefix: "vol".into()
            }
        );
        let t = parse("etcd://root:pw@a:2379/x/y/").expect("parse");
        assert_eq!(t.user, Some(("root".into(), "pw".into())));
        assert_eq!(t.prefix, "x/y");
        assert!(parse("etcd://a:2379")
            .unwrap_err()
            .contains("prefix is missing"));
        assert!(parse("etcd:///p").unwrap_err().contains("no etcd endpoint"));
    }

    /// The whole conformance suite against a real server. The test command
    /// starts etcd and sets TESSERA_TEST_ETCD_URL.
    #[test]
    #[ignore = "needs an etcd server; scripts/test.sh runs it"]
    fn conformance_on_a_real_server() {
        let url = std::env::var("TESSERA_TEST_ETCD_URL")
            .expect("TESSERA_TEST_ETCD_URL must name an etcd prefix (scripts/test.sh starts one)");
        crate::conformance::run_all(&|| {
            let e = EtcdEngine::open(&url, &url).expect("connect");
            e.reset().expect("delete the prefix");
            std::sync::Arc::new(e)
        });
    }
}
