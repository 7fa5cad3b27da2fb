//! Service containers: start each one on the job's network under its aliases, then wait for
//! their exposed TCP ports.
//!
//! The wait probes from ferry's host to the service's IP on the job network (no extra container
//! and no helper image). That needs ferry to reach the Docker bridge networks, which holds when
//! ferry runs on the Docker host; see docs/docker-executor.md.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, EndpointSettings, NetworkingConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder};
use ferry_config::joblog::{RESET, YELLOW};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::{DockerEngine, convert, docker_err, hostconfig, pull};
use crate::engine::{EngineError, JobEnv, LogSink, ServiceSpec, inline_service_log};

struct Started {
    name: String,
    id: String,
    display: String,
}

/// Start the services; returns legacy links for the build container when the network has no
/// DNS (`network_mode = "bridge"`).
pub(super) async fn start_services(
    engine: &DockerEngine,
    env: &JobEnv,
    mounts: &convert::JobMounts,
    network_mode: Option<String>,
    per_job_network: bool,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
) -> Result<Vec<String>, EngineError> {
    let mut started = Vec::new();
    let mut links = Vec::new();
    let legacy_bridge = matches!(network_mode.as_deref(), Some("bridge") | Some("default"));
    let no_aliases = matches!(network_mode.as_deref(), Some("host") | Some("none"))
        || network_mode
            .as_deref()
            .is_some_and(|m| m.starts_with("container:"));
    for (index, svc) in env.services.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let _ = log
            .write_all(format!("Starting service {} ...\n", svc.image.name).as_bytes())
            .await;
        let image = pull::ensure_image(engine, &svc.image, env, log, cancel).await?;
        let image_id = image.id.clone().unwrap_or_else(|| svc.image.name.clone());
        let name = convert::service_container_name(env, &svc.image.name, index);
        engine.remove_stale(&name).await?;
        let body = service_body(
            engine,
            env,
            svc,
            &image_id,
            mounts,
            network_mode.clone(),
            per_job_network || !(legacy_bridge || no_aliases),
        );
        let mut opts = CreateContainerOptionsBuilder::new().name(&name);
        if let Some(p) = &svc.image.platform {
            opts = opts.platform(p);
        }
        let created = engine
            .client()
            .create_container(Some(opts.build()), body)
            .await
            .map_err(|e| docker_err(&format!("creating service container {name}"), &e))?;
        engine
            .client()
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| docker_err(&format!("starting service container {name}"), &e))?;
        if legacy_bridge {
            for a in &svc.aliases {
                links.push(format!("{name}:{a}"));
            }
        }
        started.push(Started {
            name,
            id: created.id,
            display: svc.image.name.clone(),
        });
    }
    if started.is_empty() {
        return Ok(links);
    }
    if let Some(timeout) = engine.section.wait_for_services_timeout {
        let _ = log
            .write_all(
                format!(
                    "Waiting for services to be up and running (timeout {} seconds)...\n",
                    timeout.as_secs()
                )
                .as_bytes(),
            )
            .await;
        let net = network_mode.clone();
        let waits = started
            .iter()
            .map(|s| wait_for_service(engine, s, net.as_deref(), timeout));
        let results = tokio::select! {
            r = futures::future::join_all(waits) => r,
            _ = cancel.cancelled() => return Err(EngineError::Cancelled),
        };
        for (s, r) in started.iter().zip(results) {
            if let Err(why) = r {
                let logs = container_logs(engine, &s.id, true).await;
                let text = format!(
                    "\n{YELLOW}*** WARNING:{RESET} Service {} probably didn't start properly.\n\nHealth check error:\n{}\n\nService container logs:\n{}\n\n{YELLOW}*********{RESET}\n\n",
                    s.name,
                    why.trim(),
                    logs.trim_end()
                );
                let _ = log.write_all(text.as_bytes()).await;
                tracing::info!(service = %s.display, "service health check failed: {why}");
            }
        }
    }
    Ok(links)
}

fn service_body(
    engine: &DockerEngine,
    env: &JobEnv,
    svc: &ServiceSpec,
    image_id: &str,
    mounts: &convert::JobMounts,
    network_mode: Option<String>,
    with_aliases: bool,
) -> ContainerCreateBody {
    let section = &engine.section;
    // Public job variables first, then the service's own (which win), as gitlab-runner does.
    let mut vars: Vec<(String, String)> = Vec::new();
    for v in env.service_variables.iter().chain(svc.variables.iter()) {
        if let Some(slot) = vars.iter_mut().find(|(k, _)| *k == v.name) {
            slot.1 = v.value.clone();
        } else {
            vars.push((v.name.clone(), v.value.clone()));
        }
    }
    let entrypoint = if svc.image.entrypoint.is_empty() || section.disable_entrypoint_overwrite {
        None
    } else {
        Some(svc.image.entrypoint.clone())
    };
    let networking_config = match (&network_mode, with_aliases) {
        (Some(net), true) => {
            let mut endpoints = HashMap::new();
            endpoints.insert(
                net.clone(),
                EndpointSettings {
                    aliases: Some(svc.aliases.clone()),
                    ..Default::default()
                },
            );
            Some(NetworkingConfig {
                endpoints_config: Some(endpoints),
            })
        }
        _ => None,
    };
    let mut labels = convert::job_labels(env, "service");
    labels.insert("ferry.service".into(), svc.image.name.clone());
    hostconfig::add_service_labels(&mut labels, &env.container_labels);
    let mut host_config = convert::service_host_config(
        section,
        mounts,
        network_mode,
        convert::service_privileged(section, &engine.privileged_services, &svc.image.name),
    );
    hostconfig::apply_service(&mut host_config, &section.containers, &svc.image.name);
    ContainerCreateBody {
        image: Some(image_id.to_string()),
        entrypoint,
        cmd: if svc.command.is_empty() {
            None
        } else {
            Some(svc.command.clone())
        },
        env: Some(vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
        user: svc.image.user.clone(),
        labels: Some(labels),
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    }
}

/// Wait until every exposed TCP port of the service accepts a connection.
async fn wait_for_service(
    engine: &DockerEngine,
    s: &Started,
    network: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = crate::engine::deadline_after(timeout);
    let inspect = engine
        .client()
        .inspect_container(
            &s.id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .map_err(|e| super::one_line(&e))?;
    let mut ports: Vec<u16> = inspect
        .config
        .as_ref()
        .and_then(|c| c.exposed_ports.as_ref())
        .map(|p| {
            p.iter()
                .filter_map(|k| {
                    let (port, proto) = k.split_once('/').unwrap_or((k.as_str(), "tcp"));
                    if proto == "tcp" {
                        port.parse().ok()
                    } else {
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    ports.sort_unstable();
    if ports.is_empty() {
        // Nothing to wait for (gitlab-runner skips such services too).
        return Ok(());
    }
    let ip = inspect.network_settings.as_ref().and_then(|ns| {
        let nets = ns.networks.as_ref()?;
        let ep = match network {
            Some(n) => nets.get(n).or_else(|| nets.values().next()),
            None => nets.values().next(),
        }?;
        ep.ip_address.clone().filter(|ip| !ip.is_empty())
    });
    let host = ip.unwrap_or_else(|| "127.0.0.1".to_string());
    let mut pending = ports.clone();
    let mut round: u32 = 0;
    loop {
        let mut still = Vec::new();
        for p in &pending {
            let ok = engine.host_probe
                && match format!("{host}:{p}").parse::<SocketAddr>() {
                    Ok(addr) => tokio::time::timeout(
                        Duration::from_secs(1),
                        tokio::net::TcpStream::connect(addr),
                    )
                    .await
                    .map(|r| r.is_ok())
                    .unwrap_or(false),
                    Err(_) => false,
                };
            if !ok {
                still.push(*p);
            }
        }
        // Second opinion from inside the service (about once a second): its own socket table.
        // This covers a ferry that cannot reach Docker's bridge networks (ferry in a container).
        if !still.is_empty()
            && round.is_multiple_of(4)
            && let Some(listening) = proc_listening(engine, &s.id).await
        {
            still.retain(|p| !listening.contains(p));
        }
        round = round.wrapping_add(1);
        pending = still;
        if pending.is_empty() {
            return Ok(());
        }
        // A service that exited will never open its port.
        if let Ok(i) = engine
            .client()
            .inspect_container(
                &s.id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            && let Some(state) = i.state
            && state.running == Some(false)
        {
            return Err(format!(
                "service {:?} exited with code {} before opening TCP port(s) {:?}",
                s.name,
                state.exit_code.unwrap_or(-1),
                pending
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "service {:?} timeout: TCP port(s) {:?} on {host} not reachable after {} seconds",
                s.name,
                pending,
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// TCP ports the container listens on, reachable from other containers (not only loopback), read
/// from `/proc/net/tcp` and `/proc/net/tcp6` with `cat` inside it. None when that is impossible
/// (no `cat` in the image, ...).
async fn proc_listening(engine: &DockerEngine, id: &str) -> Option<Vec<u16>> {
    use bollard::exec::StartExecResults;
    let docker = engine.client();
    let exec = docker
        .create_exec(
            id,
            bollard::models::ExecConfig {
                attach_stdout: Some(true),
                attach_stderr: Some(false),
                cmd: Some(vec![
                    "cat".into(),
                    "/proc/net/tcp".into(),
                    "/proc/net/tcp6".into(),
                ]),
                ..Default::default()
            },
        )
        .await
        .ok()?;
    let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec.id, None).await.ok()?
    else {
        return None;
    };
    let mut text = String::new();
    let read = async {
        while let Some(Ok(chunk)) = output.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
    };
    tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .ok()?;
    if text.is_empty() {
        return None;
    }
    Some(listening_ports(&text))
}

/// Parse `/proc/net/tcp{,6}`: ports in state LISTEN (0A) on a non-loopback address.
pub(super) fn listening_ports(proc_net: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for line in proc_net.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[3] != "0A" {
            continue;
        }
        let Some((addr, port)) = f[1].split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port, 16) else {
            continue;
        };
        // IPv4 is little-endian hex: 127.x.x.x ends in 7F. IPv6 ::1 is 0..0 01000000.
        let loopback = (addr.len() == 8 && addr.ends_with("7F"))
            || addr == "00000000000000000000000001000000"
            || (addr.len() == 32
                && addr.starts_with("0000000000000000FFFF0000")
                && addr.ends_with("7F"));
        if !loopback && !out.contains(&port) {
            out.push(port);
        }
    }
    out
}

/// `CI_DEBUG_SERVICES`: follows every service container's output (stdout and stderr, from the
/// container's start, each line with Docker's timestamp) into `log` until `stop` or until every
/// service has stopped, as gitlab-runner's `captureContainersLogs` does. A stream that fails
/// is a warning in the log.
pub(super) async fn stream_logs(
    engine: &DockerEngine,
    env: &JobEnv,
    log: &mut LogSink<'_>,
    stop: &CancellationToken,
) {
    let streams = env.services.iter().enumerate().map(|(index, svc)| {
        let name = convert::service_container_name(env, &svc.image.name, index);
        let aliases = svc.aliases.join("-");
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .follow(true)
            .build();
        engine
            .client()
            .logs(&name, Some(opts))
            .map(move |chunk| (name.clone(), aliases.clone(), chunk))
            .boxed()
    });
    let mut all = futures::stream::select_all(streams);
    let mut out = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            next = all.next() => next,
        };
        out.clear();
        match next {
            None => return,
            Some((_, aliases, Ok(chunk))) => {
                inline_service_log(&aliases, &chunk.into_bytes(), &mut out);
            }
            Some((name, _, Err(_))) if failed.contains(&name) => continue,
            Some((name, _, Err(e))) => {
                failed.push(name.clone());
                let line = ferry_config::joblog::warning_line(&format!(
                    "error streaming logs for container {name}: {e}"
                ));
                out.extend_from_slice(line.as_bytes());
            }
        }
        let _ = log.write_all(&out).await;
    }
}

/// The last lines of a container's output, for the warning.
pub(super) async fn container_logs(engine: &DockerEngine, id: &str, timestamps: bool) -> String {
    let opts = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .timestamps(timestamps)
        .tail("100")
        .build();
    let mut stream = engine.client().logs(id, Some(opts));
    let mut out = String::new();
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            if out.len() > 64 * 1024 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    out
}

#[cfg(test)]
mod tests {
    use super::listening_ports;

    #[test]
    fn proc_net_tcp_listen_sockets() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0200A8C0:1F90 0300A8C0:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0200A8C0:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
";
        let tcp6 =
            "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1538 00000000000000000000000000000000:0000 0A 0
   1: 00000000000000000000000001000000:2710 00000000000000000000000000000000:0000 0A 0
";
        let mut ports = listening_ports(&format!("{tcp}{tcp6}"));
        ports.sort_unstable();
        // 8080 (any), 3306 (on the container IP), 5432 (IPv6 any); not 6379 or 10000 (loopback).
        assert_eq!(ports, vec![3306, 5432, 8080]);
    }
}
