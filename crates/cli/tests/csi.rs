//! The CSI node plugin, driven as kubelet drives it: over its unix socket,
//! with real FUSE mounts and bind mounts. Every call twice (the spec asks
//! for idempotence), two pods on one volume, the plugin and the volume's
//! mount process killed and recovered, and the error codes of bad
//! requests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: it asserts

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, tessera, wait_for};
use tessera_csi::proto::controller_client::ControllerClient;
use tessera_csi::proto::identity_client::IdentityClient;
use tessera_csi::proto::node_client::NodeClient;
use tessera_csi::proto::{
    volume_capability, CapacityRange, CreateVolumeRequest, DeleteVolumeRequest,
    GetPluginCapabilitiesRequest, GetPluginInfoRequest, NodeGetCapabilitiesRequest,
    NodeGetInfoRequest, NodeGetVolumeStatsRequest, NodePublishVolumeRequest,
    NodeStageVolumeRequest, NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, ProbeRequest,
    ValidateVolumeCapabilitiesRequest, VolumeCapability,
};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

struct Plugin {
    child: Child,
}

impl Plugin {
    fn start(socket: &Path, state: &Path, log: &Path) -> Plugin {
        Self::start_with(socket, state, log, "none")
    }

    fn start_with(socket: &Path, state: &Path, log: &Path, metrics: &str) -> Plugin {
        let _ = std::fs::remove_file(socket);
        let child = Command::new(common::bin())
            .args([
                "csi",
                "--mode",
                "all",
                "--node-id",
                "node-a",
                "--metrics",
                metrics,
            ])
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--state-dir")
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
            .spawn()
            .unwrap();
        wait_for("the plugin's socket", || socket.exists());
        Plugin { child }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn channel(socket: PathBuf) -> Channel {
    Endpoint::try_from("http://plugin.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

fn mount_cap(readonly: bool) -> Option<VolumeCapability> {
    use volume_capability::access_mode::Mode;
    Some(VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume::default(),
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: if readonly {
                Mode::MultiNodeReaderOnly
            } else {
                Mode::MultiNodeMultiWriter
            } as i32,
        }),
    })
}

/// Whatever a test left mounted under its directory, and the mount
/// processes the plugin started there, go when the test ends, passed or
/// failed (the mounts are daemons: nothing else would stop them).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let under = self.0.to_string_lossy().into_owned();
        for pid in mount_pids_under(&under) {
            // SAFETY: a plain signal to a mount process of this test.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&under))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
    }
}

/// PIDs of `tessera mount` processes with an argument under `dir`.
fn mount_pids_under(dir: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                        let args: Vec<String> = c
                            .split(|b| *b == 0)
                            .map(|a| String::from_utf8_lossy(a).into_owned())
                            .collect();
                        args.get(1).map(String::as_str) == Some("mount")
                            && args.iter().any(|a| a.starts_with(dir))
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of `series` (name with labels) in the plugin's metrics.
fn plugin_metric(port: u16, series: &str) -> f64 {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

/// The code of a call that must fail.
fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    r.expect_err("the call must fail").code()
}

fn is_mounted(p: &Path) -> bool {
    common::is_mounted(p)
}

#[test]
fn the_node_plugin_stages_publishes_recovers_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(dir.path().to_path_buf());
    let meta = format!("sqlite://{}/meta.db", dir.path().display());
    let storage = format!("file://{}/objects", dir.path().display());
    let out = tessera(&["format", &meta, "csivol", "--storage", &storage]);
    assert!(out.status.success(), "format: {}", stderr(&out));
    let socket = dir.path().join("csi/csi.sock");
    let state = dir.path().join("state");
    let log = dir.path().join("plugin.log");
    let mut plugin = Plugin::start(&socket, &state, &log);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ch = rt.block_on(channel(socket.clone()));
    let mut identity = IdentityClient::new(ch.clone());
    let mut node = NodeClient::new(ch);

    let info = rt
        .block_on(identity.get_plugin_info(GetPluginInfoRequest {}))
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "csi.tessera.io");
    let probe = rt
        .block_on(identity.probe(ProbeRequest {}))
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
    let caps = rt
        .block_on(node.node_get_capabilities(NodeGetCapabilitiesRequest {}))
        .unwrap()
        .into_inner();
    assert_eq!(caps.capabilities.len(), 2, "{caps:?}");
    let ni = rt
        .block_on(node.node_get_info(NodeGetInfoRequest {}))
        .unwrap()
        .into_inner();
    assert_eq!(ni.node_id, "node-a");

    let staging = dir.path().join("kubelet/pv/csivol/globalmount");
    let secrets: HashMap<String, String> = [("metaurl".to_string(), meta.clone())].into();
    let context: HashMap<String, String> = [
        ("cache-size".to_string(), "64M".to_string()),
        (
            "cache-dir".to_string(),
            dir.path().join("cache").display().to_string(),
        ),
    ]
    .into();
    let stage =
        |volume_id: &str, path: &Path, secrets: &HashMap<String, String>| NodeStageVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: path.display().to_string(),
            volume_capability: mount_cap(false),
            secrets: secrets.clone(),
            volume_context: context.clone(),
            ..Default::default()
        };

    // Bad requests, each with the spec's code.
    assert_eq!(
        code(rt.block_on(node.node_stage_volume(stage("", &staging, &secrets)))),
        Code::InvalidArgument
    );
    assert_eq!(
        code(rt.block_on(node.node_stage_volume(stage("v", Path::new(""), &secrets)))),
        Code::InvalidArgument
    );
    let mut odd = secrets.clone();
    odd.insert("password".into(), "x".into());
    let err = rt
        .block_on(node.node_stage_volume(stage("v", &staging, &odd)))
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("password"), "{}", err.message());
    let nowhere: HashMap<String, String> = [(
        "metaurl".to_string(),
        format!("sqlite://{}/none.db", dir.path().display()),
    )]
    .into();
    assert_eq!(
        code(rt.block_on(node.node_stage_volume(stage("v", &staging, &nowhere)))),
        Code::NotFound
    );
    let mut block = stage("v", &staging, &secrets);
    block.volume_capability = Some(VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(
            volume_capability::BlockVolume {},
        )),
        access_mode: None,
    });
    assert_eq!(
        code(rt.block_on(node.node_stage_volume(block))),
        Code::InvalidArgument
    );
    let publish = |target: &Path, readonly: bool| NodePublishVolumeRequest {
        volume_id: "csivol".into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: mount_cap(readonly),
        readonly,
        ..Default::default()
    };
    let pod_a = dir.path().join("kubelet/pods/a/volumes/csivol/mount");
    let pod_b = dir.path().join("kubelet/pods/b/volumes/csivol/mount");
    assert_eq!(
        code(rt.block_on(node.node_publish_volume(publish(&pod_a, false)))),
        Code::FailedPrecondition,
        "publish before stage"
    );
    let mut no_target = publish(&pod_a, false);
    no_target.target_path.clear();
    assert_eq!(
        code(rt.block_on(node.node_publish_volume(no_target))),
        Code::InvalidArgument
    );

    // Stage and publish, each twice.
    for _ in 0..2 {
        rt.block_on(node.node_stage_volume(stage("csivol", &staging, &secrets)))
            .unwrap();
    }
    assert!(is_mounted(&staging));
    for _ in 0..2 {
        rt.block_on(node.node_publish_volume(publish(&pod_a, false)))
            .unwrap();
        rt.block_on(node.node_publish_volume(publish(&pod_b, true)))
            .unwrap();
    }
    std::fs::write(pod_a.join("from-a.txt"), b"written by pod a").unwrap();
    assert_eq!(
        std::fs::read(pod_b.join("from-a.txt")).unwrap(),
        b"written by pod a"
    );
    let ro = std::fs::write(pod_b.join("from-b.txt"), b"x").unwrap_err();
    assert_eq!(ro.raw_os_error(), Some(libc::EROFS), "{ro}");
    let stats = rt
        .block_on(node.node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: "csivol".into(),
            volume_path: pod_a.display().to_string(),
            ..Default::default()
        }))
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage.len(), 2);
    assert!(
        stats.usage[0].total > 0 && stats.usage[0].used >= 0,
        "{stats:?}"
    );
    assert_eq!(
        code(
            rt.block_on(node.node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: "csivol".into(),
                volume_path: dir.path().join("gone").display().to_string(),
                ..Default::default()
            }))
        ),
        Code::NotFound
    );

    // The plugin dies: the pods' mounts stay; a new plugin knows them.
    plugin.kill9();
    assert_eq!(
        std::fs::read(pod_b.join("from-a.txt")).unwrap(),
        b"written by pod a"
    );
    let port = free_port();
    let _plugin = Plugin::start_with(&socket, &state, &log, &format!("127.0.0.1:{port}"));
    let ch = rt.block_on(channel(socket.clone()));
    let mut node = NodeClient::new(ch);
    assert_eq!(plugin_metric(port, "tessera_csi_volumes_published"), 2.0);
    assert_eq!(plugin_metric(port, "tessera_csi_mounts"), 1.0);

    // The volume's mount process dies: the plugin mounts it again and
    // binds the staging and target paths again.
    let shared: Vec<PathBuf> = std::fs::read_dir(state.join("mounts"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(shared.len(), 1, "one mount for the volume: {shared:?}");
    // A mount adds its usage to the volume's counters once a second; one
    // killed sooner loses that second's count (fsck would say so).
    std::thread::sleep(Duration::from_millis(1500));
    let pids = mount_pids_under(&shared[0].to_string_lossy());
    assert_eq!(pids.len(), 1, "one mount process: {pids:?}");
    // SAFETY: a plain signal to a process this test started (through the plugin).
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    let started = Instant::now();
    wait_for("pod b's path to answer again", || {
        std::fs::read(pod_b.join("from-a.txt")).ok().as_deref() == Some(&b"written by pod a"[..])
            && started.elapsed() > Duration::from_millis(200)
    });
    assert_ne!(
        mount_pids_under(&shared[0].to_string_lossy()),
        pids,
        "a new mount process"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("was bound again"), "{logged}");
    assert_eq!(plugin_metric(port, "tessera_csi_remounts_total"), 1.0);

    // Unpublish and unstage, each twice: nothing is left mounted.
    for _ in 0..2 {
        for target in [&pod_a, &pod_b] {
            rt.block_on(node.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: "csivol".into(),
                target_path: target.display().to_string(),
            }))
            .unwrap();
        }
    }
    assert!(!is_mounted(&pod_a) && !is_mounted(&pod_b));
    assert_eq!(
        plugin_metric(
            port,
            "tessera_csi_calls_total{method=\"NodeUnpublishVolume\",code=\"ok\"}"
        ),
        4.0
    );
    assert_eq!(plugin_metric(port, "tessera_csi_volumes_published"), 0.0);
    for _ in 0..2 {
        rt.block_on(node.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: "csivol".into(),
            staging_target_path: staging.display().to_string(),
        }))
        .unwrap();
    }
    assert!(!is_mounted(&staging));
    assert!(!is_mounted(&shared[0]));
    wait_for("the mount process to exit", || {
        mount_pids_under(&shared[0].to_string_lossy()).is_empty()
    });
    common::assert_fsck_clean(&meta, "after the plugin");
}

#[test]
fn the_controller_provisions_claims_as_directories_with_quotas() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(dir.path().to_path_buf());
    let meta = format!("sqlite://{}/meta.db", dir.path().display());
    let storage = format!("file://{}/objects", dir.path().display());
    let out = tessera(&["format", &meta, "dynvol", "--storage", &storage]);
    assert!(out.status.success(), "format: {}", stderr(&out));
    let socket = dir.path().join("csi.sock");
    let _plugin = Plugin::start(
        &socket,
        &dir.path().join("state"),
        &dir.path().join("plugin.log"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ch = rt.block_on(channel(socket));
    let mut identity = IdentityClient::new(ch.clone());
    let mut controller = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);
    let caps = rt
        .block_on(identity.get_plugin_capabilities(GetPluginCapabilitiesRequest {}))
        .unwrap()
        .into_inner();
    assert_eq!(
        caps.capabilities.len(),
        1,
        "the controller service: {caps:?}"
    );

    let secrets: HashMap<String, String> = [("metaurl".to_string(), meta.clone())].into();
    let create = |name: &str| CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 8 << 20,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap(false).unwrap()],
        parameters: [
            ("basedir".to_string(), "/k8s".to_string()),
            ("cache-size".to_string(), "64M".to_string()),
            (
                "cache-dir".to_string(),
                dir.path().join("cache").display().to_string(),
            ),
        ]
        .into(),
        secrets: secrets.clone(),
    };
    assert_eq!(
        code(rt.block_on(controller.create_volume(create("")))),
        Code::InvalidArgument
    );
    let mut no_caps = create("pvc-1");
    no_caps.volume_capabilities.clear();
    assert_eq!(
        code(rt.block_on(controller.create_volume(no_caps))),
        Code::InvalidArgument
    );
    let mut no_meta = create("pvc-1");
    no_meta.secrets.clear();
    assert_eq!(
        code(rt.block_on(controller.create_volume(no_meta))),
        Code::InvalidArgument
    );
    let mut vol = None;
    for _ in 0..2 {
        let v = rt
            .block_on(controller.create_volume(create("pvc-1")))
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(v.volume_id, "k8s/pvc-1");
        assert_eq!(v.capacity_bytes, 8 << 20);
        assert_eq!(
            v.volume_context.get("subdir").map(String::as_str),
            Some("k8s/pvc-1")
        );
        vol = Some(v);
    }
    let vol = vol.unwrap();
    // The same name with another size is another claim (csi-sanity asks).
    let mut bigger = create("pvc-1");
    bigger.capacity_range = Some(CapacityRange {
        required_bytes: 16 << 20,
        limit_bytes: 0,
    });
    assert_eq!(
        code(rt.block_on(controller.create_volume(bigger))),
        Code::AlreadyExists
    );
    let out = tessera(&["quota", "get", &meta, "/k8s/pvc-1"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("8.00 MiB"),
        "{}",
        stderr(&out)
    );
    let validated = rt
        .block_on(
            controller.validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                volume_id: vol.volume_id.clone(),
                volume_capabilities: vec![mount_cap(false).unwrap()],
                secrets: secrets.clone(),
                ..Default::default()
            }),
        )
        .unwrap()
        .into_inner();
    assert!(validated.confirmed.is_some(), "{validated:?}");
    assert_eq!(
        code(rt.block_on(controller.validate_volume_capabilities(
            ValidateVolumeCapabilitiesRequest {
                volume_id: "k8s/nope".into(),
                volume_capabilities: vec![mount_cap(false).unwrap()],
                secrets: secrets.clone(),
                ..Default::default()
            }
        ))),
        Code::NotFound
    );

    // A pod gets the claim's directory, and its quota holds there.
    let staging = dir.path().join("staging");
    let target = dir.path().join("pod/mount");
    rt.block_on(node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: mount_cap(false),
        secrets: secrets.clone(),
        volume_context: vol.volume_context.clone(),
        ..Default::default()
    }))
    .unwrap();
    rt.block_on(node.node_publish_volume(NodePublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: mount_cap(false),
        ..Default::default()
    }))
    .unwrap();
    wait_for("the quota in df", || common::df_size(&target) == 8 << 20);
    let (written, errno) = common::write_until_refused(&target.join("big"), 16 << 20);
    assert_eq!(errno, libc::EDQUOT, "after {written} bytes");
    assert!(written <= 8 << 20, "{written}");
    rt.block_on(node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        target_path: target.display().to_string(),
    }))
    .unwrap();
    rt.block_on(node.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
    }))
    .unwrap();

    // Reclaim policy Delete: the directory and its quota go, twice is fine.
    assert_eq!(
        code(rt.block_on(controller.delete_volume(DeleteVolumeRequest {
            volume_id: String::new(),
            secrets: secrets.clone(),
        }))),
        Code::InvalidArgument
    );
    for _ in 0..2 {
        rt.block_on(controller.delete_volume(DeleteVolumeRequest {
            volume_id: vol.volume_id.clone(),
            secrets: secrets.clone(),
        }))
        .unwrap();
    }
    let out = tessera(&["quota", "list", &meta]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no quotas"));
    let m = common::Mount::start(
        &meta,
        &{
            let p = dir.path().join("check");
            std::fs::create_dir_all(&p).unwrap();
            p
        },
        &["--cache-dir", "memory", "--metrics", "none"],
    );
    assert!(m.join("k8s").exists() && !m.join("k8s/pvc-1").exists());
    m.unmount();
    common::assert_fsck_clean(&meta, "after the claim's deletion");
}
