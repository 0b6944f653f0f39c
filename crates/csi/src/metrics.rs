//! The plugin's own Prometheus metrics (`tessera csi --metrics ADDR`):
//! calls by method and status code, the volumes it has mounted, staged and
//! published, and the mounts it had to start again.

use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub struct PluginMetrics {
    registry: Mutex<Registry>,
    calls: Family<Vec<(String, String)>, Counter>,
    pub mounts: Gauge,
    pub staged: Gauge,
    pub published: Gauge,
    pub remounts: Counter,
}

impl Default for PluginMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tessera_csi");
        let calls = Family::<Vec<(String, String)>, Counter>::default();
        let (mounts, staged, published) = (Gauge::default(), Gauge::default(), Gauge::default());
        let remounts = Counter::default();
        registry.register("calls", "CSI calls by method and gRPC code", calls.clone());
        registry.register(
            "mounts",
            "tessera mount processes (one per volume and option set)",
            mounts.clone(),
        );
        registry.register("volumes_staged", "staging paths", staged.clone());
        registry.register("volumes_published", "pods' target paths", published.clone());
        registry.register(
            "remounts",
            "mounts started again after their process died",
            remounts.clone(),
        );
        PluginMetrics {
            registry: Mutex::new(registry),
            calls,
            mounts,
            staged,
            published,
            remounts,
        }
    }
}

impl PluginMetrics {
    /// Count one call of `method` that ended with `result`.
    fn call<T>(&self, method: &str, result: &Result<T, tonic::Status>) {
        let code = match result {
            Ok(_) => "ok".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.calls
            .get_or_create(&vec![
                ("method".to_string(), method.to_string()),
                ("code".to_string(), code),
            ])
            .inc();
    }

    /// Do one call's work on a blocking thread (it mounts, binds and asks
    /// the metadata engine, all blocking) and count how it ended.
    pub async fn run<T: Send + 'static>(
        &self,
        method: &str,
        work: impl FnOnce() -> Result<T, tonic::Status> + Send + 'static,
    ) -> Result<T, tonic::Status> {
        let result = tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| crate::checks::internal("plugin task", e))
            .and_then(|r| r);
        self.call(method, &result);
        result
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry.lock());
        out
    }
}
