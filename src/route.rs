//! Choosing where a request goes: the upstream format that matches the client's own
//! (passthrough) when some provider speaks it, else the other format through a translator;
//! which account and key is the scheduler's job ([`crate::upstream`]). Model aliases and
//! tiers plug in here later.

use crate::config::{ApiKind, RawRouting, RawTier, TierWhen};
use crate::error::{ApiError, Dialect};
use crate::request::RequestHead;
use crate::store::KeyRow;
use crate::translate::reasoning::ReasoningMode;
use crate::translate::Direction;
use crate::upstream::pool::Pool;

/// Where one request will be sent.
#[derive(Debug, Clone)]
pub struct Route {
    /// The format spoken to the upstream.
    pub dialect: Dialect,
    /// Set when that is not the client's format.
    pub translate: Option<Direction>,
    /// The model asked of the upstream.
    pub model: String,
    /// The alias pattern (or `tier:<pattern>`) that chose it, if one did.
    pub alias: Option<String>,
    /// Models to try next when no account can serve `model`.
    pub fallbacks: Vec<String>,
}

/// Model routing rules, from `[routing]`.
#[derive(Debug, Clone, Default)]
pub struct Router {
    rules: RawRouting,
}

/// `*` matches any run of characters; ASCII case is ignored.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi].eq_ignore_ascii_case(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

/// Claude Code's client-side `[1m]` selector sometimes leaks into the model id.
fn strip_1m(model: &str) -> &str {
    let mut m = model.trim();
    while m.len() >= 4 && m[m.len() - 4..].eq_ignore_ascii_case("[1m]") {
        m = m[..m.len() - 4].trim_end();
    }
    m
}

impl Router {
    pub fn new(rules: &RawRouting) -> Router {
        Router {
            rules: rules.clone(),
        }
    }

    /// How reasoning is shown to clients whose key does not say.
    pub fn reasoning(&self) -> ReasoningMode {
        self.rules.reasoning
    }

    /// Models to try, in order, when no account can serve `model` (plan or quota).
    pub fn fallbacks(&self, model: &str) -> &[String] {
        self.rules
            .fallbacks
            .iter()
            .find(|f| glob(&f.from, model))
            .map(|f| f.to.as_slice())
            .unwrap_or_default()
    }

    /// The model to ask the upstream for, and the alias pattern that chose it.
    pub fn resolve(&self, requested: &str) -> (String, Option<&str>) {
        let model = strip_1m(requested);
        if let Some(a) = self.rules.aliases.iter().find(|a| glob(&a.from, model)) {
            return (a.to.clone(), Some(a.from.as_str()));
        }
        // GLM ids are case-insensitive in practice; the docs write `GLM-4.7`.
        if model.len() >= 4 && model[..4].eq_ignore_ascii_case("glm-") {
            return (model.to_ascii_lowercase(), None);
        }
        (model.to_string(), None)
    }

    /// The first tier whose pattern matches `requested` and whose conditions `body` meets.
    fn tier(&self, requested: &str, body: &[u8]) -> Option<&RawTier> {
        let mut candidates = self
            .rules
            .tiers
            .iter()
            .filter(|t| glob(&t.model, requested))
            .peekable();
        candidates.peek()?;
        let facts = Facts::of(body)?;
        candidates.find(|t| facts.meet(&t.when))
    }

    pub fn route(
        &self,
        pool: &Pool,
        dialect: Dialect,
        head: &RequestHead,
        key: Option<&KeyRow>,
        body: Option<&[u8]>,
    ) -> Result<Route, ApiError> {
        let requested = key
            .and_then(|k| k.force_model.as_deref())
            .unwrap_or(&head.model);
        let tier = body.and_then(|b| self.tier(requested, b));
        let (model, alias, mut fallbacks) = match tier {
            Some(t) => {
                let (first, rest) = t.models.split_first().unwrap_or((&t.model, &[]));
                let (model, _) = self.resolve(first);
                (model, Some(format!("tier:{}", t.model)), rest.to_vec())
            }
            None => {
                let (model, alias) = self.resolve(requested);
                (model, alias.map(str::to_string), Vec::new())
            }
        };
        fallbacks.extend(self.fallbacks(&model).iter().cloned());
        if let Some(allowed) = key.and_then(|k| k.models.as_deref()) {
            if !allowed.split(',').any(|p| glob(p.trim(), &model)) {
                return Err(ApiError::ModelNotAllowed(model));
            }
        }
        let preferred = self
            .rules
            .upstream_api
            .iter()
            .find(|r| glob(&r.model, &model))
            .map(|r| match r.api {
                ApiKind::Openai => Dialect::OpenAi,
                ApiKind::Anthropic => Dialect::Anthropic,
            })
            .filter(|d| pool.speaks(*d));
        let (dialect, translate) = match preferred {
            Some(d) => (d, Direction::between(dialect, d)),
            None => format_for(pool, dialect)?,
        };
        Ok(Route {
            dialect,
            translate,
            model,
            alias,
            fallbacks,
        })
    }
}

fn name(d: Dialect) -> &'static str {
    match d {
        Dialect::OpenAi => "OpenAI Chat Completions",
        Dialect::Anthropic => "Anthropic Messages",
    }
}

/// What tiers look at in a request (either API format).
struct Facts {
    prompt_tokens: u64,
    tools: bool,
    images: bool,
    thinking: bool,
    max_tokens: u64,
}

impl Facts {
    fn of(body: &[u8]) -> Option<Facts> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let has = |k: &str| {
            v.get(k)
                .and_then(|t| t.as_array())
                .is_some_and(|t| !t.is_empty())
        };
        let images = v["messages"].as_array().is_some_and(|ms| {
            ms.iter().any(|m| {
                m["content"].as_array().is_some_and(|parts| {
                    parts
                        .iter()
                        .any(|p| matches!(p["type"].as_str(), Some("image" | "image_url")))
                })
            })
        });
        let thinking = matches!(v["thinking"]["type"].as_str(), Some("enabled" | "adaptive"))
            || v["reasoning_effort"]
                .as_str()
                .is_some_and(|e| !matches!(e, "none" | "minimal"));
        Some(Facts {
            prompt_tokens: body.len() as u64 / 4,
            tools: has("tools"),
            images,
            thinking,
            max_tokens: v["max_completion_tokens"]
                .as_u64()
                .or_else(|| v["max_tokens"].as_u64())
                .unwrap_or(0),
        })
    }

    fn meet(&self, w: &TierWhen) -> bool {
        w.min_prompt_tokens.is_none_or(|n| self.prompt_tokens >= n)
            && w.max_prompt_tokens.is_none_or(|n| self.prompt_tokens <= n)
            && w.tools.is_none_or(|b| self.tools == b)
            && w.images.is_none_or(|b| self.images == b)
            && w.thinking.is_none_or(|b| self.thinking == b)
            && w.min_max_tokens.is_none_or(|n| self.max_tokens >= n)
    }
}

/// The upstream format for a client format: its own when spoken, else the other one
/// through a translator.
fn format_for(pool: &Pool, dialect: Dialect) -> Result<(Dialect, Option<Direction>), ApiError> {
    if pool.speaks(dialect) {
        return Ok((dialect, None));
    }
    let other = match dialect {
        Dialect::OpenAi => Dialect::Anthropic,
        Dialect::Anthropic => Dialect::OpenAi,
    };
    match Direction::between(dialect, other) {
        Some(d) if pool.speaks(other) => Ok((other, Some(d))),
        _ => Err(ApiError::NoUpstream(format!(
            "this gateway has no upstream that speaks the {} or {} API",
            name(dialect),
            name(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_pick_models_by_what_the_request_holds() {
        let tier = |when: TierWhen, models: &[&str]| RawTier {
            model: "auto".into(),
            when,
            models: models.iter().map(|m| m.to_string()).collect(),
        };
        let r = Router::new(&RawRouting {
            tiers: vec![
                tier(
                    TierWhen {
                        min_prompt_tokens: Some(1000),
                        ..TierWhen::default()
                    },
                    &["glm-4.7", "glm-4.6"],
                ),
                tier(
                    TierWhen {
                        images: Some(true),
                        ..TierWhen::default()
                    },
                    &["glm-4.6v"],
                ),
                tier(
                    TierWhen {
                        tools: Some(true),
                        thinking: Some(false),
                        ..TierWhen::default()
                    },
                    &["glm-4.5"],
                ),
                tier(TierWhen::default(), &["glm-4.5-air"]),
            ],
            ..RawRouting::default()
        });
        let pick = |body: serde_json::Value| {
            r.tier("auto", body.to_string().as_bytes())
                .map(|t| t.models.clone())
        };
        let msgs = serde_json::json!([{"role": "user", "content": "hi"}]);
        assert_eq!(
            pick(serde_json::json!({"messages": [{"role": "user", "content": "x".repeat(5000)}]})),
            Some(vec!["glm-4.7".to_string(), "glm-4.6".to_string()])
        );
        assert_eq!(
            pick(
                serde_json::json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]})
            ),
            Some(vec!["glm-4.6v".to_string()])
        );
        assert_eq!(
            pick(serde_json::json!({"messages": msgs, "tools": [{"name": "f"}]})),
            Some(vec!["glm-4.5".to_string()])
        );
        assert_eq!(
            pick(
                serde_json::json!({"messages": msgs, "tools": [{"name": "f"}],
                                    "thinking": {"type": "enabled"}})
            ),
            Some(vec!["glm-4.5-air".to_string()]),
            "thinking rules the tools tier out"
        );
        assert!(
            r.tier("glm-4.7", b"{}").is_none(),
            "only the tier's own model name"
        );
    }

    #[test]
    fn globs_match_case_insensitively() {
        assert!(glob("claude-*haiku*", "claude-haiku-4-5-20251001"));
        assert!(glob("claude-*haiku*", "Claude-3-5-Haiku"));
        assert!(!glob("claude-*haiku*", "claude-sonnet-4-5"));
        assert!(glob("gpt-4o*", "gpt-4o"));
        assert!(glob("*", ""));
        assert!(!glob("a*b", "acbx"));
        assert!(glob("a*b*c", "aXXbYYc"));
    }

    #[test]
    fn defaults_make_claude_code_work_and_ids_are_normalised() {
        let settings = crate::config::validate(Default::default(), None).expect("defaults");
        let r = Router::new(&settings.routing);
        assert_eq!(r.resolve("claude-sonnet-4-6").0, "glm-4.7");
        assert_eq!(r.resolve("claude-opus-4-7[1m]").0, "glm-4.7");
        let (m, alias) = r.resolve("claude-haiku-4-5-20251001");
        assert_eq!((m.as_str(), alias), ("glm-4.5-air", Some("claude-*haiku*")));
        assert_eq!(r.resolve("GLM-4.7").0, "glm-4.7");
        assert_eq!(r.resolve("glm-5.3[1m]").0, "glm-5.3");
        assert_eq!(r.resolve("custom-model").0, "custom-model");
        let mine = Router::new(&RawRouting {
            aliases: vec![crate::config::RawAlias {
                from: "claude-*".into(),
                to: "glm-5".into(),
            }],
            ..RawRouting::default()
        });
        assert_eq!(mine.resolve("claude-sonnet-4-6").0, "glm-5");
    }
}
