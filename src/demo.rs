//! `glmgate demo`: the real gateway in front of the built-in mock upstream, with an SQLite
//! store and a fresh client key, and copy-paste examples for each kind of client.

use std::path::Path;
use std::time::Duration;

use crate::config::{self, RawAccount, RawConfig, RawProvider};
use crate::mock::{self, MockOptions};
use crate::store::Store;

pub async fn run(listen: &str, db: &Path, chunk_delay: Duration) -> anyhow::Result<()> {
    let mock_addr = mock::spawn(MockOptions {
        chunk_delay,
        ..MockOptions::default()
    })
    .await?;
    let admin_token = format!("adm-{:032x}", rand::random::<u128>());
    let mut raw = RawConfig::default();
    raw.server.listen = listen.to_string();
    raw.store.path = db.to_path_buf();
    raw.admin.token = Some(admin_token.clone());
    // Two accounts on the mock, as a team with two Z.AI accounts would configure them.
    raw.providers = vec![RawProvider {
        name: "mock".into(),
        preset: Some("custom".into()),
        openai_base_url: Some(format!("http://{mock_addr}/api/coding/paas/v4")),
        anthropic_base_url: Some(format!("http://{mock_addr}/api/anthropic")),
        accounts: ["team-a", "team-b"]
            .iter()
            .map(|name| RawAccount {
                name: name.to_string(),
                keys: vec![format!("mock-key-{name}")],
                ..RawAccount::default()
            })
            .collect(),
        ..RawProvider::default()
    }];
    let settings = config::validate(raw, None)?;

    let store = Store::open(&settings.store_path).await?;
    let name = format!("demo-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S"));
    let (_, secret) = crate::auth::create_key(&store, &name, None).await?;
    store.close().await;

    let listener = crate::app::bind(settings.listen).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!(
        r#"
glmgate demo is running: the real gateway, in front of the built-in mock Z.AI upstream
(mock at http://{mock_addr}), storing keys and usage in {db}.

  Client key:      {secret}
  OpenAI base URL: {base}/v1
  Anthropic base:  {base}
  Health:          {base}/health   Readiness: {base}/ready
  Your usage:      curl -s {base}/stats -H "Authorization: Bearer {secret}"
  Admin token:     {admin_token}
  Upstreams:       curl -s {base}/admin/upstreams -H "Authorization: Bearer {admin_token}"
  Metrics:         curl -s {base}/metrics -H "Authorization: Bearer {admin_token}"

Try it:
  curl -s {base}/v1/chat/completions -H "Authorization: Bearer {secret}" \
    -H 'content-type: application/json' \
    -d '{{"model":"glm-4.7","messages":[{{"role":"user","content":"Hello"}}]}}'

  curl -sN {base}/v1/messages -H "x-api-key: {secret}" -H 'anthropic-version: 2023-06-01' \
    -H 'content-type: application/json' \
    -d '{{"model":"glm-4.7","max_tokens":256,"stream":true,"messages":[{{"role":"user","content":"Hello"}}]}}'

  OpenAI SDK (Python):
    from openai import OpenAI
    client = OpenAI(base_url="{base}/v1", api_key="{secret}")
    print(client.chat.completions.create(model="glm-4.7", messages=[{{"role": "user", "content": "Hello"}}]))

  Anthropic SDK (Python):
    import anthropic
    client = anthropic.Anthropic(base_url="{base}", api_key="{secret}")
    print(client.messages.create(model="glm-4.7", max_tokens=256, messages=[{{"role": "user", "content": "Hello"}}]))

  Claude Code:
    ANTHROPIC_BASE_URL={base} ANTHROPIC_AUTH_TOKEN={secret} ANTHROPIC_MODEL=glm-4.7 claude

Faults can be injected per request, e.g. add "mock_fault": "429-1302" to a request body
(see docs/mock.md). Press Ctrl-C to stop.
"#,
        db = db.display()
    );
    crate::app::serve(settings, listener, crate::app::termination_signal()).await
}
