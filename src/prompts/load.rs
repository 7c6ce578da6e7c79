//! Loading and validating a profile directory.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::file::{
    RawAfterCall, RawEscalation, RawHours, RawMatch, RawProfile, RawReject, RawSession,
    RawTurnDetection, RawTurnKind,
};
use super::hours::{OpenHours, OpenWindow};
use super::profile::{
    AfterCallSettings, Blocklist, CapacityLimit, DEFAULT_APOLOGY, DEFAULT_HANDOFF_LINE,
    DEFAULT_MAX_CALL_DURATION_SECS, EscalationSettings, ExtractFrom, ExtractRule, HeaderRule,
    HeaderTest, MatchRules, Profile, RejectRules, SessionSettings, SmsSettings, TurnDetection,
};
use super::{LoadError, LoadErrors};
use crate::escalation::phrases::{DEFAULT_PHRASES, PhraseMatcher};
use crate::sip::{CallParties, E164, SipHeader, TransferTarget};
use crate::tools::template::{Segment, Template};

/// All profiles of a directory, validated together: unique names, exactly one default.
#[derive(Debug, Clone)]
pub struct ProfileSet {
    /// Sorted by name.
    profiles: Vec<Arc<Profile>>,
    /// Index of the default profile in `profiles`.
    default: usize,
}

impl ProfileSet {
    /// Reads every `*.toml` file directly in `dir` (not recursing; hidden `.*` files skipped)
    /// with its instructions file, and validates them (see the module docs for the rules).
    ///
    /// # Errors
    /// Every problem found, not just the first: one [`LoadError`] per problem with the file and,
    /// where it is a TOML location, the 1-based line. TOML syntax and shape errors (wrong type,
    /// unknown key) stop the checks of that file; other files are still checked.
    pub fn load(dir: &Path) -> Result<ProfileSet, LoadErrors> {
        let mut errors = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                return Err(LoadErrors(vec![LoadError {
                    file: dir.to_path_buf(),
                    line: None,
                    message: format!("cannot read the profile directory: {e}"),
                }]));
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "toml")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    && p.is_file()
            })
            .collect();
        files.sort();
        let mut sources = Vec::with_capacity(files.len());
        for path in files {
            match std::fs::read_to_string(&path) {
                Ok(text) => sources.push((path, text)),
                Err(e) => errors.push(LoadError {
                    file: path,
                    line: None,
                    message: format!("cannot read: {e}"),
                }),
            }
        }
        Self::validate(dir, sources, errors, &|p: &Path| std::fs::read_to_string(p))
    }

    /// Validates profile files given as text, exactly as [`ProfileSet::load`] validates the
    /// files it reads: `files` are `(path, TOML text)` pairs (the path's stem is the default
    /// name; the order does not matter), and `instructions` reads an instructions file (its
    /// argument is `dir` joined with the profile's `instructions`, default `<stem>.md`).
    ///
    /// For embedding and for the fuzz target `fuzz/fuzz_targets/profile_load.rs`, which loads
    /// hostile TOML without touching the file system.
    ///
    /// # Errors
    /// As [`ProfileSet::load`]: every problem found, sorted by file and line.
    pub fn from_texts(
        dir: &Path,
        files: Vec<(PathBuf, String)>,
        instructions: &dyn Fn(&Path) -> std::io::Result<String>,
    ) -> Result<ProfileSet, LoadErrors> {
        let mut files = files;
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Self::validate(dir, files, Vec::new(), instructions)
    }

    /// The checks after reading: per file, then across files. `errors` holds the files that
    /// could not be read.
    fn validate(
        dir: &Path,
        sources: Vec<(PathBuf, String)>,
        mut errors: Vec<LoadError>,
        instructions: &dyn Fn(&Path) -> std::io::Result<String>,
    ) -> Result<ProfileSet, LoadErrors> {
        let no_files = sources.is_empty() && errors.is_empty();
        let mut unreadable = !errors.is_empty();
        let mut loaded: Vec<Loaded> = Vec::new();
        for (path, text) in &sources {
            match load_file(dir, path, text, instructions) {
                Ok(l) => {
                    errors.extend(l.errors.iter().cloned());
                    loaded.push(l);
                }
                Err(e) => {
                    unreadable = true;
                    errors.push(e);
                }
            }
        }

        // Unique names.
        let mut by_name: BTreeMap<&str, Vec<&Loaded>> = BTreeMap::new();
        for l in &loaded {
            by_name.entry(l.name.as_str()).or_default().push(l);
        }
        for (name, ls) in &by_name {
            if ls.len() > 1 {
                let files: Vec<String> = ls.iter().map(|l| l.file.display().to_string()).collect();
                for l in ls {
                    errors.push(LoadError {
                        file: l.file.clone(),
                        line: l.name_line,
                        message: format!(
                            "duplicate profile name {name:?} (used by {})",
                            files.join(", ")
                        ),
                    });
                }
            }
        }

        // Exactly one default.
        let defaults: Vec<&Loaded> = loaded.iter().filter(|l| l.is_default).collect();
        match defaults.len() {
            // A file that failed to parse may be the default: don't add noise then.
            0 if !unreadable => errors.push(LoadError {
                file: dir.to_path_buf(),
                line: None,
                message: if no_files {
                    "no *.toml profiles; exactly one must have default = true".into()
                } else {
                    "no profile has default = true; exactly one must".into()
                },
            }),
            0 | 1 => {}
            _ => {
                let names: Vec<&str> = defaults.iter().map(|l| l.name.as_str()).collect();
                for l in &defaults {
                    errors.push(LoadError {
                        file: l.file.clone(),
                        line: l.default_line,
                        message: format!(
                            "several profiles have default = true ({}); exactly one must",
                            names.join(", ")
                        ),
                    });
                }
            }
        }

        if !errors.is_empty() {
            errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            return Err(LoadErrors(errors));
        }
        let mut profiles: Vec<Arc<Profile>> = loaded
            .into_iter()
            .filter_map(|l| l.profile.map(Arc::new))
            .collect();
        profiles.sort_by(|a, b| a.name.cmp(&b.name));
        let default = profiles
            .iter()
            .position(|p| p.is_default)
            .expect("checked: exactly one default");
        Ok(ProfileSet { profiles, default })
    }

    /// The profile for a call: among profiles whose `[match]` rules all match, the highest
    /// `priority`, ties broken by name order (the alphabetically first wins); otherwise the
    /// default profile.
    pub fn select(&self, parties: &CallParties, headers: &[SipHeader]) -> &Arc<Profile> {
        let mut best: Option<&Arc<Profile>> = None;
        for p in &self.profiles {
            if p.matches(parties, headers) && best.is_none_or(|b| p.priority > b.priority) {
                best = Some(p);
            }
        }
        best.unwrap_or(&self.profiles[self.default])
    }

    /// The profile called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Profile>> {
        self.profiles
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.profiles[i])
    }

    /// The default profile.
    pub fn default_profile(&self) -> &Arc<Profile> {
        &self.profiles[self.default]
    }

    /// All profiles in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Profile>> {
        self.profiles.iter()
    }

    /// Number of profiles (at least 1 once loaded).
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Always false for a loaded set (it has a default); present for API completeness.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}

/// One file's outcome: what the cross-file checks need, plus the profile when it is valid.
struct Loaded {
    file: PathBuf,
    name: String,
    name_line: Option<usize>,
    is_default: bool,
    default_line: Option<usize>,
    profile: Option<Profile>,
    errors: Vec<LoadError>,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Collects errors of one file, with lines from spans.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<LoadError>,
}

impl Ctx<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        line_of(self.text, span.start)
    }

    fn err_at(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let line = span.map(|s| self.line(s));
        self.errors.push(LoadError {
            file: self.file.to_path_buf(),
            line,
            message: message.into(),
        });
    }

    fn err<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.err_at(Some(at.span()), message);
    }

    /// A non-empty (after trimming) string, or an error naming `key`.
    fn text(&mut self, v: Option<Spanned<String>>, key: &str) -> Option<String> {
        let v = v?;
        let t = v.get_ref().trim();
        if t.is_empty() {
            self.err(&v, format!("{key} must not be empty"));
            None
        } else {
            Some(t.to_owned())
        }
    }

    fn e164(&mut self, v: &Spanned<String>, key: &str) -> Option<E164> {
        match E164::parse(v.get_ref().trim()) {
            Ok(n) => Some(n),
            Err(e) => {
                self.err(v, format!("{key}: {e}"));
                None
            }
        }
    }

    /// A transfer target; a `tel:` number must be dialable: `+` then
    /// [`E164::MIN_DIALABLE_DIGITS`] to 15 digits.
    fn target(&mut self, v: &Spanned<String>, key: &str) -> Option<TransferTarget> {
        match TransferTarget::parse(v.get_ref()) {
            Ok(TransferTarget::Tel(n)) if n.digits().len() < E164::MIN_DIALABLE_DIGITS => {
                self.err(
                    v,
                    format!(
                        "{key}: {n} is too short to dial: expected tel: then '+' and {} to {} \
                         digits (E.164)",
                        E164::MIN_DIALABLE_DIGITS,
                        E164::MAX_DIGITS
                    ),
                );
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                self.err(v, format!("{key}: {e}"));
                None
            }
        }
    }

    /// A SIP final failure status (400..=699) for `/reject`, or `default`.
    fn status(&mut self, v: Option<Spanned<i64>>, default: u16) -> u16 {
        match v {
            None => default,
            Some(s) => match u16::try_from(*s.get_ref()) {
                Ok(code) if (400..=699).contains(&code) => code,
                _ => {
                    self.err(
                        &s,
                        format!(
                            "status {} is not a SIP failure response (400..=699)",
                            s.get_ref()
                        ),
                    );
                    default
                }
            },
        }
    }
}

/// Validates one profile file's `text`. `Err` only when it is not a profile-shaped TOML
/// document; validation problems are in `Loaded::errors`.
fn load_file(
    dir: &Path,
    path: &Path,
    text: &str,
    read_instructions: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<Loaded, LoadError> {
    let raw: RawProfile = toml::from_str(text).map_err(|e| LoadError {
        file: path.to_path_buf(),
        line: e.span().map(|s| line_of(text, s.start)),
        message: e.message().trim().to_owned(),
    })?;
    let mut cx = Ctx {
        file: path,
        text,
        errors: Vec::new(),
    };
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();

    // name, default, priority
    let name_line = raw.name.as_ref().map(|n| cx.line(n.span()));
    let name = match &raw.name {
        Some(n) => n.get_ref().clone(),
        None => stem.clone(),
    };
    if !valid_name(&name) {
        let msg = format!(
            "profile name {name:?} must be 1 to 64 characters of letters, digits, '-', '_' or '.'"
        );
        match &raw.name {
            Some(n) => cx.err(n, msg),
            None => cx.err_at(None, format!("{msg} (it comes from the file name)")),
        }
    }
    let is_default = raw.default.as_ref().is_some_and(|d| *d.get_ref());
    let default_line = raw.default.as_ref().map(|d| cx.line(d.span()));

    // instructions
    let instructions_rel = raw
        .instructions
        .as_ref()
        .map(|s| s.get_ref().clone())
        .unwrap_or_else(|| format!("{stem}.md"));
    let instructions_span = raw.instructions.as_ref().map(|s| s.span());
    let instructions_path = dir.join(&instructions_rel);
    let instructions = match read_instructions(&instructions_path) {
        Ok(s) if s.trim().is_empty() => {
            cx.err_at(
                instructions_span.clone(),
                format!("instructions file {} is empty", instructions_path.display()),
            );
            String::new()
        }
        Ok(s) => s.trim().to_owned(),
        Err(e) => {
            cx.err_at(
                instructions_span,
                format!(
                    "cannot read instructions file {}: {e}",
                    instructions_path.display()
                ),
            );
            String::new()
        }
    };

    let greeting = cx.text(raw.greeting, "greeting");
    let max_call_duration = match raw.max_call_duration_secs {
        Some(s) if *s.get_ref() == 0 => {
            cx.err(&s, "max_call_duration_secs must be at least 1");
            Duration::from_secs(DEFAULT_MAX_CALL_DURATION_SECS)
        }
        Some(s) => Duration::from_secs(*s.get_ref()),
        None => Duration::from_secs(DEFAULT_MAX_CALL_DURATION_SECS),
    };

    let match_span = raw.match_rules.as_ref().map(|m| m.span());
    let match_given = raw.match_rules.as_ref().is_some_and(|m| {
        let m = m.get_ref();
        !(m.dialed.is_empty()
            && m.caller.is_empty()
            && m.caller_prefix.is_empty()
            && m.sip_header.is_empty())
    });
    let match_rules = match raw.match_rules {
        Some(m) => match_rules(&mut cx, m.into_inner()),
        None => MatchRules::default(),
    };
    if !is_default && !match_given {
        cx.err_at(
            match_span,
            format!(
                "profile {name:?} is not the default and has no [match] rules, so it can never be selected"
            ),
        );
    }
    let api = match &raw.api {
        None => crate::calls::record::Api::Realtime,
        Some(a) => match a.get_ref().as_str() {
            "realtime" => crate::calls::record::Api::Realtime,
            "live" => crate::calls::record::Api::Live,
            other => {
                cx.err(a, format!("api {other:?} must be \"realtime\" or \"live\""));
                crate::calls::record::Api::Realtime
            }
        },
    };
    let raw_session = raw.session.unwrap_or_default();
    let live_model_unset = raw_session.model.is_none();
    if api == crate::calls::record::Api::Live {
        live_only_checks(&mut cx, &raw_session);
    } else if let Some(v) = &raw_session.delegation_model {
        cx.err(
            v,
            "session.delegation_model is a GPT-Live setting (api = \"live\"); Realtime runs tools itself",
        );
    }
    let mut session = session(&mut cx, raw_session);
    if api == crate::calls::record::Api::Live && live_model_unset {
        session.model = crate::openai::live::DEFAULT_LIVE_MODEL.into();
    }
    let escalation = match raw.escalation {
        Some(e) => {
            let span = e.span();
            escalation(&mut cx, e.into_inner(), span)
        }
        None => EscalationSettings::disabled(),
    };
    let reject = match raw.reject {
        Some(r) => reject(&mut cx, r),
        None => RejectRules::default(),
    };
    let tools_base_url = raw.tools_base_url.and_then(|u| {
        let text = u.get_ref().trim().trim_end_matches('/').to_string();
        match reqwest::Url::parse(&text) {
            Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() => Some(text),
            Ok(_) => {
                cx.err(
                    &u,
                    format!("tools_base_url {text:?} must be an http(s) URL"),
                );
                None
            }
            Err(e) => {
                cx.err(&u, format!("tools_base_url {text:?}: {e}"));
                None
            }
        }
    });
    let mut allow_private = std::collections::BTreeSet::new();
    for host in &raw.tools_allow_private_hosts {
        let normalized = crate::tools::egress::normalize_host(host.get_ref());
        let is_ip = normalized.parse::<std::net::IpAddr>().is_ok();
        let is_name = !normalized.is_empty()
            && normalized.len() <= 253
            && normalized.split('.').all(|l| {
                (1..=63).contains(&l.len())
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if is_ip || is_name {
            allow_private.insert(normalized);
        } else {
            cx.err(
                host,
                format!(
                    "tools_allow_private_hosts: {:?} must be a host name or an IP address as written in the tool url (no scheme, port, path or wildcard)",
                    host.get_ref()
                ),
            );
        }
    }
    let filler_line = cx.text(raw.filler_line, "filler_line");
    let mut problems = Vec::new();
    let tools = crate::tools::build_tools(
        raw.tools,
        tools_base_url.as_deref(),
        &std::sync::Arc::new(allow_private),
        escalation.enabled && escalation.target.is_some(),
        &mut problems,
    );
    for (span, message) in problems {
        cx.err_at(span, message);
    }
    let after_call = match raw.after_call {
        Some(a) => after_call(&mut cx, a),
        None => AfterCallSettings::default(),
    };

    let profile = cx.errors.is_empty().then(|| Profile {
        name: name.clone(),
        description: raw.description.filter(|d| !d.trim().is_empty()),
        source: path.to_path_buf(),
        instructions_path,
        is_default,
        priority: raw.priority,
        api,
        instructions,
        greeting,
        max_call_duration,
        match_rules,
        session,
        escalation,
        reject,
        tools,
        tools_base_url,
        filler_line,
        after_call,
    });
    Ok(Loaded {
        file: path.to_path_buf(),
        name,
        name_line,
        is_default,
        default_line,
        profile,
        errors: cx.errors,
    })
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn match_rules(cx: &mut Ctx<'_>, m: RawMatch) -> MatchRules {
    let dialed = m
        .dialed
        .iter()
        .filter_map(|v| cx.e164(v, "match.dialed"))
        .collect();
    let caller = m
        .caller
        .iter()
        .filter_map(|v| cx.e164(v, "match.caller"))
        .collect();
    let caller_prefix = m
        .caller_prefix
        .iter()
        .filter_map(|v| cx.e164(v, "match.caller_prefix"))
        .map(|n| n.as_str().to_owned())
        .collect();
    let mut sip_header = Vec::new();
    for rule in m.sip_header {
        let span = rule.span();
        let rule = rule.into_inner();
        let name = rule.name.get_ref().trim().to_owned();
        if name.is_empty() {
            cx.err(&rule.name, "match.sip_header: name must not be empty");
            continue;
        }
        let given = rule.equals.is_some() as u8
            + rule.contains.is_some() as u8
            + rule.regex.is_some() as u8;
        if given != 1 {
            cx.err_at(
                Some(span),
                format!("match.sip_header {name:?}: give exactly one of equals, contains or regex"),
            );
            continue;
        }
        let test = if let Some(s) = rule.equals {
            HeaderTest::Equals(s)
        } else if let Some(s) = rule.contains {
            HeaderTest::Contains(s)
        } else if let Some(r) = rule.regex {
            match regex::Regex::new(r.get_ref()) {
                Ok(re) => HeaderTest::Regex(re),
                Err(e) => {
                    cx.err(&r, format!("match.sip_header {name:?}: bad regex: {e}"));
                    continue;
                }
            }
        } else {
            continue;
        };
        sip_header.push(HeaderRule { name, test });
    }
    MatchRules {
        dialed,
        caller,
        caller_prefix,
        sip_header,
    }
}

/// `api = "live"`: GPT-Live decides when to speak and has no transcription or audio tuning settings
/// (OpenAI's voice-sip guide (`?api=live`)), so the Realtime-only `[session]` keys are errors
/// rather than silently ignored.
fn live_only_checks(cx: &mut Ctx<'_>, s: &RawSession) {
    let msg = |key: &str| {
        format!("session.{key} is a Realtime setting; GPT-Live (api = \"live\") has none")
    };
    if let Some(v) = &s.speed {
        cx.err(v, msg("speed"));
    }
    if let Some(v) = &s.transcription_model {
        cx.err(v, msg("transcription_model"));
    }
    if let Some(v) = &s.language {
        cx.err(v, msg("language"));
    }
    if let Some(v) = &s.turn_detection {
        cx.err(v, msg("turn_detection"));
    }
    if s.noise_reduction.is_some() {
        cx.err_at(None, msg("noise_reduction"));
    }
}

fn session(cx: &mut Ctx<'_>, s: RawSession) -> SessionSettings {
    let d = SessionSettings::default();
    let speed = s.speed.and_then(|v| {
        let x = *v.get_ref();
        if (0.25..=1.5).contains(&x) {
            Some(x)
        } else {
            cx.err(&v, format!("session.speed {x} is outside 0.25..=1.5"));
            None
        }
    });
    let turn_detection = match s.turn_detection {
        Some(td) => {
            let span = td.span();
            turn_detection(cx, td.into_inner(), span)
        }
        None => d.turn_detection,
    };
    SessionSettings {
        model: cx.text(s.model, "session.model").unwrap_or(d.model),
        voice: cx.text(s.voice, "session.voice").unwrap_or(d.voice),
        speed,
        transcription_model: cx
            .text(s.transcription_model, "session.transcription_model")
            .unwrap_or(d.transcription_model),
        language: cx.text(s.language, "session.language"),
        noise_reduction: s.noise_reduction,
        turn_detection,
        audio: s.audio.unwrap_or_default(),
        delegation_model: cx
            .text(s.delegation_model, "session.delegation_model")
            .unwrap_or(d.delegation_model),
    }
}

fn turn_detection(cx: &mut Ctx<'_>, t: RawTurnDetection, span: Range<usize>) -> TurnDetection {
    let kind = t.kind.unwrap_or(RawTurnKind::SemanticVad);
    let server_fields = t.threshold.is_some()
        || t.prefix_padding_ms.is_some()
        || t.silence_duration_ms.is_some()
        || t.idle_timeout_ms.is_some();
    match kind {
        RawTurnKind::SemanticVad => {
            if server_fields {
                cx.err_at(
                    Some(span),
                    "session.turn_detection: threshold, prefix_padding_ms, silence_duration_ms and idle_timeout_ms are server_vad settings",
                );
            }
            TurnDetection::SemanticVad {
                eagerness: t.eagerness.unwrap_or_default(),
            }
        }
        RawTurnKind::ServerVad => {
            if t.eagerness.is_some() {
                cx.err_at(
                    Some(span),
                    "session.turn_detection: eagerness is a semantic_vad setting",
                );
            }
            let threshold = t.threshold.and_then(|v| {
                let x = *v.get_ref();
                if (0.0..=1.0).contains(&x) {
                    Some(x)
                } else {
                    cx.err(
                        &v,
                        format!("session.turn_detection.threshold {x} is outside 0.0..=1.0"),
                    );
                    None
                }
            });
            TurnDetection::ServerVad {
                threshold,
                prefix_padding_ms: t.prefix_padding_ms,
                silence_duration_ms: t.silence_duration_ms,
                idle_timeout_ms: t.idle_timeout_ms,
            }
        }
        RawTurnKind::None => {
            if server_fields || t.eagerness.is_some() {
                cx.err_at(
                    Some(span),
                    "session.turn_detection: type \"none\" takes no other settings",
                );
            }
            TurnDetection::None
        }
    }
}

fn escalation(cx: &mut Ctx<'_>, e: RawEscalation, span: Range<usize>) -> EscalationSettings {
    let enabled = e.enabled.unwrap_or(true);
    let target = e
        .target
        .as_ref()
        .and_then(|t| cx.target(t, "escalation.target"));
    if enabled && e.target.is_none() {
        cx.err_at(
            Some(span),
            "escalation is enabled but has no target (set target, or enabled = false)",
        );
    }
    let handoff_line = cx
        .text(e.handoff_line, "escalation.handoff_line")
        .unwrap_or_else(|| DEFAULT_HANDOFF_LINE.into());
    let mut phrases: Vec<String> = Vec::new();
    if e.default_phrases.unwrap_or(true) {
        phrases.extend(DEFAULT_PHRASES.iter().map(|s| s.to_string()));
    }
    for p in &e.phrases {
        if PhraseMatcher::new(&[p.get_ref()]).is_empty() {
            cx.err(
                p,
                format!("escalation.phrases: {:?} has no words", p.get_ref()),
            );
        } else {
            phrases.push(p.get_ref().clone());
        }
    }
    let dtmf_key = e.dtmf_key.and_then(|k| {
        let mut chars = k.get_ref().chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if c.is_ascii_digit() || matches!(c, '*' | '#') => Some(c),
            (Some(c), None) if matches!(c.to_ascii_uppercase(), 'A'..='D') => {
                Some(c.to_ascii_uppercase())
            }
            _ => {
                cx.err(
                    &k,
                    format!(
                        "escalation.dtmf_key {:?} must be one DTMF key: 0-9, *, #, A-D",
                        k.get_ref()
                    ),
                );
                None
            }
        }
    });
    let (fallback_target, apology) = match e.fallback {
        Some(f) => (
            f.target
                .as_ref()
                .and_then(|t| cx.target(t, "escalation.fallback.target")),
            cx.text(f.apology, "escalation.fallback.apology"),
        ),
        None => (None, None),
    };
    let action = escalation_action(cx, e.action, e.connect, target.as_ref());
    EscalationSettings {
        action,
        enabled,
        target,
        handoff_line,
        phrases: if enabled {
            PhraseMatcher::new(&phrases)
        } else {
            PhraseMatcher::default()
        },
        dtmf_key,
        fallback_target,
        apology: apology.unwrap_or_else(|| DEFAULT_APOLOGY.into()),
    }
}

/// `action` and `[escalation.connect]`: `connect_refer` and `twilio_dial` need a `tel:` target (the
/// Connect number); `[escalation.connect]` is only for those two; its labels must be safe to route
/// on in a contact flow (letters, digits, `-`, `_`; Amazon Connect "Set contact attributes",
/// <https://docs.aws.amazon.com/connect/latest/adminguide/set-contact-attributes.html>).
fn escalation_action(
    cx: &mut Ctx<'_>,
    action: Option<Spanned<String>>,
    connect: Option<Spanned<super::file::RawConnect>>,
    target: Option<&TransferTarget>,
) -> crate::escalation::Action {
    use crate::escalation::{Action, ConnectHandover};
    let name = action.as_ref().map(|a| a.get_ref().trim().to_string());
    match name.as_deref() {
        None | Some("refer") => {
            if let Some(c) = &connect {
                cx.err(
                    c,
                    "escalation.connect is only used with action = \"connect_refer\" or \"twilio_dial\"",
                );
            }
            Action::Refer
        }
        Some(kind @ ("connect_refer" | "twilio_dial")) => {
            let a = action.as_ref().expect("named");
            if target.is_some_and(|t| !matches!(t, TransferTarget::Tel(_))) {
                cx.err(
                    a,
                    format!(
                        "escalation: action {kind:?} needs a tel:+E164 target (the Amazon Connect number)"
                    ),
                );
            }
            let mut settings = ConnectHandover::default();
            if let Some(c) = connect {
                let c = c.into_inner();
                let mut label = |v: Option<Spanned<String>>, key: &str| {
                    let v = v?;
                    let t = v.get_ref().trim();
                    if t.is_empty()
                        || t.len() > 64
                        || !t
                            .chars()
                            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
                    {
                        cx.err(
                            &v,
                            format!(
                                "{key} {t:?}: 1 to 64 letters, digits, '-' or '_' (a contact flow routes on it)"
                            ),
                        );
                        None
                    } else {
                        Some(t.to_string())
                    }
                };
                settings.queue = label(c.queue, "escalation.connect.queue");
                settings.intent = label(c.intent, "escalation.connect.intent");
                settings.priority = label(c.priority, "escalation.connect.priority");
                if let Some(ttl) = c.token_ttl_secs {
                    match u64::try_from(*ttl.get_ref()) {
                        Ok(secs) if (30..=86_400).contains(&secs) => {
                            settings.token_ttl = std::time::Duration::from_secs(secs);
                        }
                        _ => cx.err(
                            &ttl,
                            format!(
                                "escalation.connect.token_ttl_secs {} must be 30..=86400",
                                ttl.get_ref()
                            ),
                        ),
                    }
                }
                if let Some(r) = c.read_code {
                    settings.read_code = r;
                }
            }
            if kind == "twilio_dial" {
                Action::TwilioDial(settings)
            } else {
                Action::ConnectRefer(settings)
            }
        }
        Some(other) => {
            cx.err(
                action.as_ref().expect("named"),
                format!(
                    "escalation.action {other:?}: one of \"refer\", \"connect_refer\", \"twilio_dial\""
                ),
            );
            Action::Refer
        }
    }
}

fn reject(cx: &mut Ctx<'_>, r: RawReject) -> RejectRules {
    let blocklist = r.blocklist.map(|b| {
        let span = b.span();
        let b = b.into_inner();
        let numbers: Vec<E164> = b
            .numbers
            .iter()
            .filter_map(|v| cx.e164(v, "reject.blocklist.numbers"))
            .collect();
        let prefixes: Vec<String> = b
            .prefixes
            .iter()
            .filter_map(|v| cx.e164(v, "reject.blocklist.prefixes"))
            .map(|n| n.as_str().to_owned())
            .collect();
        if b.numbers.is_empty() && b.prefixes.is_empty() {
            cx.err_at(
                Some(span),
                "reject.blocklist lists no numbers and no prefixes",
            );
        }
        Blocklist {
            numbers,
            prefixes,
            status: cx.status(b.status, 603),
        }
    });
    let hours = r.hours.map(|h| {
        let span = h.span();
        hours(cx, h.into_inner(), span)
    });
    let capacity = r.capacity.map(|c| {
        let max = *c.max_concurrent_calls.get_ref();
        if max < 1 {
            cx.err(
                &c.max_concurrent_calls,
                format!("reject.capacity.max_concurrent_calls {max} must be at least 1"),
            );
        }
        CapacityLimit {
            max_concurrent_calls: usize::try_from(max).unwrap_or(0),
            status: cx.status(c.status, 486),
        }
    });
    RejectRules {
        blocklist,
        hours: hours.flatten(),
        capacity,
    }
}

fn hours(cx: &mut Ctx<'_>, h: RawHours, span: Range<usize>) -> Option<OpenHours> {
    let tz = match h.timezone.get_ref().trim().parse::<chrono_tz::Tz>() {
        Ok(tz) => Some(tz),
        Err(_) => {
            cx.err(
                &h.timezone,
                format!(
                    "reject.hours.timezone {:?} is not an IANA time zone name (e.g. \"America/New_York\")",
                    h.timezone.get_ref()
                ),
            );
            None
        }
    };
    if h.open.is_empty() {
        cx.err_at(Some(span), "reject.hours.open lists no opening windows");
    }
    let windows: Vec<OpenWindow> = h
        .open
        .iter()
        .filter_map(|w| match OpenWindow::parse(w.get_ref()) {
            Ok(w) => Some(w),
            Err(e) => {
                cx.err(w, format!("reject.hours.open: {e}"));
                None
            }
        })
        .collect();
    let status = cx.status(h.status, 480);
    Some(OpenHours {
        timezone: tz?,
        windows,
        status,
    })
}

fn after_call(cx: &mut Ctx<'_>, a: RawAfterCall) -> AfterCallSettings {
    let mut extract: Vec<ExtractRule> = Vec::new();
    for rule in a.extract {
        let rule = rule.into_inner();
        let name = rule.name.get_ref().trim().to_string();
        if !crate::tools::template::valid_name(&name) {
            cx.err(
                &rule.name,
                format!("after_call.extract: name {name:?} must be 1-64 of A-Z a-z 0-9 _ - ."),
            );
            continue;
        }
        if extract.iter().any(|r| r.name == name) {
            cx.err(
                &rule.name,
                format!("after_call.extract: {name:?} is declared twice"),
            );
            continue;
        }
        let regex = match regex::Regex::new(rule.regex.get_ref()) {
            Ok(r) => r,
            Err(e) => {
                cx.err(
                    &rule.regex,
                    format!("after_call.extract {name:?}: bad regex: {e}"),
                );
                continue;
            }
        };
        let from = match rule.from.as_ref().map(|f| f.get_ref().as_str()) {
            None | Some("any") => ExtractFrom::Any,
            Some("caller") => ExtractFrom::Caller,
            Some("agent") => ExtractFrom::Agent,
            Some(other) => {
                let f = rule.from.as_ref().expect("some");
                cx.err(
                    f,
                    format!(
                        "after_call.extract {name:?}: from {other:?} must be caller, agent or any"
                    ),
                );
                continue;
            }
        };
        extract.push(ExtractRule { name, regex, from });
    }
    let sms = a.sms.and_then(|sms| {
        let span = sms.span();
        let sms = sms.into_inner();
        let template = match Template::parse(sms.template.get_ref()) {
            Ok(t) => t,
            Err(e) => {
                cx.err(&sms.template, format!("after_call.sms.template: {e}"));
                return None;
            }
        };
        if sms.template.get_ref().trim().is_empty() {
            cx.err(&sms.template, "after_call.sms.template must not be empty");
            return None;
        }
        let mut ok = true;
        for seg in template.segments() {
            if matches!(seg, Segment::Summary(_) | Segment::Extract(_))
                && !sms.allow_transcript_fields
            {
                cx.err(
                    &sms.template,
                    format!(
                        "after_call.sms.template: {{{{{}...}}}} is taken from what was said on \
                         the call, and an SMS from our number must not relay a caller's words; \
                         use {{{{call.*}}}} fields and fixed text, or set \
                         allow_transcript_fields = true (URLs, e-mail addresses and phone \
                         numbers are then removed from those fields)",
                        seg.kind()
                    ),
                );
                ok = false;
                continue;
            }
            match seg {
                Segment::Lit(_) | Segment::Call(_) | Segment::Summary(_) => {}
                Segment::Extract(n) if extract.iter().any(|r| &r.name == n) => {}
                Segment::Extract(n) => {
                    cx.err(
                        &sms.template,
                        format!("after_call.sms.template: {{{{extract.{n}}}}} names no [[after_call.extract]] rule"),
                    );
                    ok = false;
                }
                other => {
                    cx.err(
                        &sms.template,
                        format!(
                            "after_call.sms.template: {{{{{}...}}}} placeholders are not allowed in an SMS",
                            other.kind()
                        ),
                    );
                    ok = false;
                }
            }
        }
        let mut require = Vec::new();
        for r in &sms.require {
            if extract.iter().any(|x| &x.name == r.get_ref()) {
                require.push(r.get_ref().clone());
            } else {
                cx.err(
                    r,
                    format!("after_call.sms.require: {:?} names no [[after_call.extract]] rule", r.get_ref()),
                );
                ok = false;
            }
        }
        let _ = span;
        ok.then_some(SmsSettings {
            template,
            require,
            allow_transcript_fields: sms.allow_transcript_fields,
        })
    });
    AfterCallSettings {
        summary: a.summary.unwrap_or(true),
        extract,
        sms,
    }
}
