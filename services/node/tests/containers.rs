//! What a Kubernetes StatefulSet does, played with Docker containers of the
//! locally built image (deploy/docker/build-local-image.sh) on a private
//! network this test creates: pods `ringstore-0..2` bootstrap, 10,000 keys
//! go in, `ringstore-3` and `ringstore-4` join with the same settings and
//! the Rebalancer moves their share to them; every key reads back from
//! every pod; a pod is killed under reads and writes and restarted;
//! `ringstore-4` is drained and removed; no acknowledged write is lost.
//! Everything created is removed, pass or fail.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use awc::http::StatusCode;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_ringstore");
const KEYS: usize = 10_000;

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output()?;
    anyhow::ensure!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Removes the containers, network and image it names when dropped.
struct Sandbox {
    prefix: String,
    image: String,
    network: String,
    containers: Vec<String>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let _ = Command::new("docker").args(["network", "rm", &self.network]).output();
        let _ = Command::new("docker").args(["rmi", "-f", &self.image]).output();
    }
}

impl Sandbox {
    fn name(&self, pod: u64) -> String {
        format!("{}-ringstore-{pod}", self.prefix)
    }

    /// Starts pod `ringstore-<pod>` with the StatefulSet's settings: one
    /// environment for all, the id from the host name.
    fn start(&mut self, pod: u64) -> anyhow::Result<()> {
        let name = self.name(pod);
        let host = format!("ringstore-{pod}");
        let envs = [
            "RINGSTORE_ID_FROM_HOSTNAME=true".to_string(),
            "RINGSTORE_INITIAL_CLUSTER=1=ringstore-0:7080,2=ringstore-1:7080,3=ringstore-2:7080".into(),
            "RINGSTORE_JOIN=http://ringstore-0:8080".into(),
            format!("RINGSTORE_ADVERTISE_PEER={host}:7080"),
            format!("RINGSTORE_ADVERTISE_HTTP={host}:8080"),
            "RINGSTORE_SHARDS=16".into(),
            "RINGSTORE_RAFT_TICK_MS=50".into(),
        ];
        let mut args = vec!["run", "-d", "--name", &name, "--hostname", &host, "--network", &self.network];
        args.extend(["--network-alias", &host]);
        for e in &envs {
            args.extend(["-e", e]);
        }
        args.push(&self.image);
        docker(&args)?;
        if !self.containers.contains(&name) {
            self.containers.push(name);
        }
        Ok(())
    }

    /// The pod's HTTP URL on the private network (reachable from here).
    fn url(&self, pod: u64) -> anyhow::Result<String> {
        let ip =
            docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &self.name(pod)])?;
        anyhow::ensure!(!ip.is_empty(), "pod {pod} has no address");
        Ok(format!("http://{ip}:8080"))
    }
}

/// Replicas per node id from `/v1/cluster`, once every shard has a leader.
async fn replicas(url: &str) -> Option<BTreeMap<u64, usize>> {
    let v = json_of(url, "/v1/cluster").await?;
    let mut per = BTreeMap::new();
    for s in v["shards"].as_array()? {
        s["leader"].as_u64()?;
        for r in s["replicas"].as_array()? {
            *per.entry(r.as_u64()?).or_insert(0) += 1;
        }
    }
    Some(per)
}

#[actix_rt::test]
async fn a_statefulset_of_containers_scales_3_to_5_survives_a_kill_and_drains_losing_nothing() {
    let prefix = format!("rstest{}", std::process::id());
    let image = format!("ringstore-test:{prefix}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/docker/build-local-image.sh");
    let out = Command::new(&script).args([BIN, &image]).output().expect("running build-local-image.sh");
    assert!(out.status.success(), "image build: {}", String::from_utf8_lossy(&out.stderr));
    let mut sb = Sandbox { prefix: prefix.clone(), image, network: prefix.clone(), containers: Vec::new() };
    docker(&["network", "create", &sb.network]).expect("a private network");
    for pod in 0..3 {
        sb.start(pod).unwrap();
    }
    let urls: Vec<String> = (0..3).map(|p| sb.url(p).unwrap()).collect();
    eventually(Duration::from_secs(90), "three pods serve and every shard has a leader", || {
        let urls = urls.clone();
        async move {
            for u in &urls {
                if replicas(u).await.is_none() {
                    return false;
                }
            }
            true
        }
    })
    .await;

    // 10,000 keys through the three pods.
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(100) {
        let puts = chunk.iter().map(|i| {
            let url = urls[i % 3].clone();
            async move { put(&url, &format!("key-{i}"), format!("value-{i}").as_bytes()).await.status }
        });
        let statuses = futures::future::join_all(puts).await;
        assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    }

    // Two more pods with the same settings join; the Rebalancer evens out.
    sb.start(3).unwrap();
    sb.start(4).unwrap();
    let all: Vec<String> = (0..5).map(|p| sb.url(p).unwrap()).collect();
    eventually(Duration::from_secs(300), "five pods hold their share of replicas", || {
        let u = all[0].clone();
        async move {
            let Some(per) = replicas(&u).await else { return false };
            let idle = json_of(&u, "/v1/rebalance").await.is_some_and(|v| v["state"] == "idle");
            let counts: Vec<usize> = (1..=5).map(|n| per.get(&n).copied().unwrap_or(0)).collect();
            idle && counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1
        }
    })
    .await;

    // Every key from every pod.
    for (p, url) in all.iter().enumerate() {
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(200) {
            let gets = chunk.iter().map(|i| {
                let url = url.clone();
                async move { (get(&url, &format!("key-{i}")).await.body, *i) }
            });
            for (body, i) in futures::future::join_all(gets).await {
                assert_eq!(body, format!("value-{i}").as_bytes(), "key-{i} from pod {p}");
            }
        }
    }

    // A pod is killed under load, then restarted (as its StatefulSet would).
    let survivors: Vec<String> = [0, 2, 3, 4].iter().map(|p| all[*p].clone()).collect();
    let writers = Writers::start(survivors.clone(), 4, 10_000);
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    docker(&["kill", &sb.name(1)]).unwrap();
    actix_rt::time::sleep(Duration::from_secs(8)).await;
    for i in (0..KEYS).step_by(97) {
        let r = get(&survivors[i % 4], &format!("key-{i}")).await;
        assert_eq!(r.body, format!("value-{i}").as_bytes(), "key-{i} readable while a pod is down");
    }
    docker(&["start", &sb.name(1)]).unwrap();

    // Scale-in: drain the highest ordinal, then remove its pod.
    let u0 = all[0].clone();
    eventually(Duration::from_secs(60), "the drain of ringstore-4 is accepted", || {
        let u0 = u0.clone();
        async move { call("POST", &u0, "/v1/cluster/nodes/5/drain", &[], vec![]).await.status == StatusCode::OK }
    })
    .await;
    eventually(Duration::from_secs(300), "ringstore-4 ends with no replicas and is removed", || {
        let u0 = u0.clone();
        async move {
            let Some(v) = json_of(&u0, "/v1/cluster").await else { return false };
            let removed =
                v["nodes"].as_array().is_some_and(|n| n.iter().any(|n| n["id"] == 5 && n["state"] == "removed"));
            removed && replicas(&u0).await.is_some_and(|per| !per.contains_key(&5))
        }
    })
    .await;
    docker(&["rm", "-f", &sb.name(4)]).unwrap();
    let (acks, fails) = writers.stop_counting().await;
    assert!(!acks.is_empty(), "writes went on");
    assert!(fails.keys().all(|k| k == "503" || k == "no_answer"), "failures other than 503 / a killed pod: {fails:?}");
    let left: Vec<String> = (0..4).map(|p| all[p].clone()).collect();
    let lost = lost_writes(&acks, &left).await;
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost: {:?}", lost.len(), acks.len(), lost);
    for i in (0..KEYS).step_by(13) {
        assert_eq!(get(&left[i % 4], &format!("key-{i}")).await.body, format!("value-{i}").as_bytes());
    }
}
