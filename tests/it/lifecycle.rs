//! Shutdown and the command line, on the real binary where signals matter.

use futures_util::StreamExt;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use crate::common::*;

#[tokio::test]
async fn graceful_stop_lets_in_flight_streams_finish_and_stores_their_usage() {
    let mut env = start(Opts::default()).await;
    let body = with_fault(openai_body(true), "slow-chunks=50");
    let resp = env.openai(&body).await;
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.expect("chunk").expect("ok");
    assert!(!first.is_empty());
    let gateway = env.gateway.take().expect("running");
    let stopper = tokio::spawn(gateway.stop());
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.expect("stream keeps going during shutdown"));
    }
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
    stopper.await.expect("joined").expect("clean stop");
    // New connections are refused once stopped.
    assert!(env.http.get(env.url("/health")).send().await.is_err());
    let rows = env.store.usage_rows().await.expect("rows");
    assert_eq!(rows.len(), 1, "the usage queue was drained on shutdown");
    assert_eq!(rows[0]["outcome"], "ok");
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_glmgate"))
}

#[tokio::test]
async fn sigterm_drains_streams_and_keys_cli_works() {
    let mock = glmgate::mock::spawn(Default::default())
        .await
        .expect("mock");
    let dir = tempfile::tempdir().expect("tmp");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let config = dir.path().join("glmgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[store]\npath = \"{db}\"\n\n\
             [upstream]\nwatch_config = false\npreset = \"custom\"\nopenai_base_url = \"http://{mock}/api/coding/paas/v4\"\n\
             anthropic_base_url = \"http://{mock}/api/anthropic\"\n\n[accounting]\nflush_interval_ms = 50\n",
            db = dir.path().join("g.db").display()
        ),
    )
    .expect("write config");

    // keys create prints only the secret on stdout.
    let out = bin()
        .args(["keys", "create", "--name", "cli", "--config"])
        .arg(&config)
        .output()
        .expect("run keys create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    assert!(key.starts_with("gg-"));
    let list = bin()
        .args(["keys", "list", "--config"])
        .arg(&config)
        .output()
        .expect("list");
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains("cli") && listed.contains(&key[..10]));
    assert!(!listed.contains(&key), "list never shows the secret");

    let mut child = bin()
        .args(["serve", "--config"])
        .arg(&config)
        .env("ZAI_API_KEY", "upstream-env-key")
        .env("GLMGATE_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("read") > 0,
            "gateway exited early"
        );
        if line.contains("glmgate listening") {
            break;
        }
    }

    // SIGHUP re-reads the file: one more upstream key.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(
            "watch_config = false",
            "watch_config = false\nkeys = [\"added-by-hup\"]",
        ),
    )
    .expect("rewrite config");
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("read") > 0,
            "gateway exited on SIGHUP"
        );
        if line.contains("upstream configuration reloaded") {
            assert!(line.contains("2 key(s)"), "{line}");
            break;
        }
    }

    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // A serving thread buffers its request lines and writes them once a second: the
    // request's line shows while the gateway runs.
    let resp = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&openai_body(false))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("read") > 0,
            "gateway exited"
        );
        if line.contains(" request ") && line.contains("stream=false") {
            assert!(
                line.contains("outcome=ok") && line.contains("status=200"),
                "{line}"
            );
            break;
        }
    }

    let body = with_fault(openai_body(true), "slow-chunks=50");
    let resp = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    stream.next().await.expect("chunk").expect("ok");

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.expect("in-flight stream finishes"));
    }
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "clean exit on SIGTERM");
    let mut logs = String::new();
    stderr.read_to_string(&mut logs).expect("logs");
    assert!(
        !logs.contains("upstream-env-key") && !logs.contains("added-by-hup"),
        "upstream keys never logged"
    );
    assert!(!logs.contains(&key), "client key never logged");
    // The stream that finished during shutdown was logged by its serving thread on the way out.
    assert!(
        logs.lines().any(|l| l.contains(" request ")
            && l.contains("stream=true")
            && l.contains("outcome=ok")),
        "{logs}"
    );

    // The mock saw an upstream key (from ZAI_API_KEY or the reloaded file); usage was
    // stored before exit.
    let stats: serde_json::Value = reqwest::get(format!("http://{mock}/_mock/stats"))
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    let used = stats["last_authorization"].as_str().expect("auth");
    assert!(
        ["Bearer upstream-env-key", "Bearer added-by-hup"].contains(&used),
        "{used}"
    );
    let store = glmgate::store::Store::open(&dir.path().join("g.db"))
        .await
        .expect("store");
    let rows = store.usage_rows().await.expect("rows");
    assert_eq!(rows.len(), 2, "the plain request and the drained stream");
    assert!(rows.iter().all(|r| r["outcome"] == "ok"), "{rows:?}");

    let revoke = bin()
        .args(["keys", "revoke", "cli", "--config"])
        .arg(&config)
        .output()
        .expect("revoke");
    assert!(revoke.status.success());
    let again = bin()
        .args(["keys", "revoke", "cli", "--config"])
        .arg(&config)
        .output()
        .expect("revoke");
    assert!(
        !again.status.success(),
        "revoking twice says there is nothing to revoke"
    );
}

#[test]
fn a_taken_address_is_named_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = bin()
        .args(["mock", "--listen", &addr.to_string()])
        .output()
        .expect("run mock");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {addr}: ")),
        "stderr: {err}"
    );
}
