//! In-memory engine: a B-tree behind one lock. For unit tests only; it lives
//! and dies with the process.

use parking_lot::Mutex;
use std::collections::BTreeMap;

use crate::kv::{KvEngine, KvTxn};
use crate::{MetaError, Result};

#[derive(Default)]
pub struct MemoryEngine {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

struct MemTxn<'a> {
    map: &'a mut BTreeMap<Vec<u8>, Vec<u8>>,
    /// Previous values of keys this transaction changed, to roll back.
    undo: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    read_only: bool,
}

impl KvTxn for MemTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.get(key).cloned())
    }
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if self.read_only {
            return Err(MetaError::Engine("write in a read-only transaction".into()));
        }
        let old = self.map.insert(key.to_vec(), value.to_vec());
        self.undo.push((key.to_vec(), old));
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> Result<()> {
        if self.read_only {
            return Err(MetaError::Engine("write in a read-only transaction".into()));
        }
        let old = self.map.remove(key);
        self.undo.push((key.to_vec(), old));
        Ok(())
    }
    fn scan(&mut self, begin: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .map
            .range(begin.to_vec()..end.to_vec())
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl KvEngine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn run_once(
        &self,
        read_only: bool,
        f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>,
    ) -> Result<()> {
        let mut map = self.map.lock();
        let mut tx = MemTxn {
            map: &mut map,
            undo: Vec::new(),
            read_only,
        };
        let res = f(&mut tx);
        if res.is_err() {
            for (k, old) in tx.undo.into_iter().rev() {
                match old {
                    Some(v) => tx.map.insert(k, v),
                    None => tx.map.remove(&k),
                };
            }
        }
        res
    }

    fn reset(&self) -> Result<()> {
        self.map.lock().clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        crate::conformance::run_all(&|| std::sync::Arc::new(super::MemoryEngine::default()));
    }
}
