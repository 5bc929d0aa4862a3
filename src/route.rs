//! Choosing where a request goes. Today: the upstream endpoint that speaks the client's own
//! format (passthrough). Model aliases, tiers and translation plug in here later.

use reqwest::Url;

use crate::config::UpstreamSettings;
use crate::error::{ApiError, Dialect};
use crate::request::RequestHead;

/// Where one request will be sent (borrowed from the [`Router`]: nothing is copied).
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub dialect: Dialect,
    pub url: &'a Url,
}

/// Precomputed endpoint URLs per client format.
#[derive(Debug, Clone)]
pub struct Router {
    openai: Option<Url>,
    anthropic: Option<Url>,
}

fn join(base: &Url, suffix: &str) -> Result<Url, url::ParseError> {
    Url::parse(&format!("{}{suffix}", base.as_str().trim_end_matches('/')))
}

impl Router {
    pub fn new(up: &UpstreamSettings) -> anyhow::Result<Router> {
        Ok(Router {
            openai: up
                .openai_base
                .as_ref()
                .map(|b| join(b, "/chat/completions"))
                .transpose()?,
            anthropic: up
                .anthropic_base
                .as_ref()
                .map(|b| join(b, "/v1/messages"))
                .transpose()?,
        })
    }

    pub fn route(&self, dialect: Dialect, _head: &RequestHead) -> Result<Route<'_>, ApiError> {
        let url = match dialect {
            Dialect::OpenAi => self.openai.as_ref(),
            Dialect::Anthropic => self.anthropic.as_ref(),
        };
        let url = url.ok_or_else(|| {
            ApiError::NoUpstream(format!(
                "this gateway has no upstream that speaks the {} API, and it cannot yet \
                 translate between formats",
                match dialect {
                    Dialect::OpenAi => "OpenAI Chat Completions",
                    Dialect::Anthropic => "Anthropic Messages",
                }
            ))
        })?;
        Ok(Route { dialect, url })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_format() {
        let up = crate::config::validate(Default::default(), None)
            .expect("defaults")
            .upstream;
        let r = Router::new(&up).expect("router");
        let head = RequestHead {
            model: "glm-4.7".into(),
            stream: false,
        };
        assert_eq!(
            r.route(Dialect::OpenAi, &head)
                .expect("openai")
                .url
                .as_str(),
            "https://api.z.ai/api/coding/paas/v4/chat/completions"
        );
        assert_eq!(
            r.route(Dialect::Anthropic, &head)
                .expect("anthropic")
                .url
                .as_str(),
            "https://api.z.ai/api/anthropic/v1/messages"
        );
    }
}
