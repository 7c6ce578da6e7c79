//! Tests for loading, selection, admission and the accept body.

use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

use super::*;
use crate::sip::{CallParties, E164, SipHeader, TransferTarget};

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Writes `NAME.toml` and a non-empty `NAME.md`.
fn profile(dir: &Path, stem: &str, toml: &str) {
    write(dir, &format!("{stem}.toml"), toml);
    write(
        dir,
        &format!("{stem}.md"),
        &format!("You are the {stem} agent.\n"),
    );
}

fn load_ok(dir: &Path) -> ProfileSet {
    match ProfileSet::load(dir) {
        Ok(s) => s,
        Err(e) => panic!("load failed:\n{e}"),
    }
}

fn load_err(dir: &Path) -> Vec<(String, Option<usize>, String)> {
    let errs = ProfileSet::load(dir).expect_err("load should fail").0;
    errs.into_iter()
        .map(|e| {
            let f = e
                .file
                .strip_prefix(dir)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| e.file.display().to_string());
            (f, e.line, e.message)
        })
        .collect()
}

/// Asserts that an error for `file`:`line` exists whose message contains `needle`.
fn has(errs: &[(String, Option<usize>, String)], file: &str, line: Option<usize>, needle: &str) {
    assert!(
        errs.iter()
            .any(|(f, l, m)| f == file && *l == line && m.contains(needle)),
        "no error {file}:{line:?} containing {needle:?} in:\n{errs:#?}"
    );
}

fn e(s: &str) -> E164 {
    E164::parse(s).unwrap()
}

fn parties(caller: Option<&str>, dialed: Option<&str>) -> CallParties {
    CallParties {
        caller: caller.map(e),
        dialed: dialed.map(e),
        ..CallParties::default()
    }
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

const DEFAULT: &str = "default = true\n";

#[test]
fn shipped_example_profiles_load() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("prompts");
    let set = load_ok(&dir);
    assert_eq!(set.len(), 6);
    let names: Vec<&str> = set.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "connect-support",
            "default",
            "hinglish-support",
            "live-frontdesk",
            "restaurant-concierge",
            "support"
        ]
    );
    let live = set.get("live-frontdesk").unwrap();
    assert_eq!(live.api, crate::calls::record::Api::Live);
    assert_eq!(live.session.model, "gpt-live-1");
    let body = live.live_session();
    assert_eq!(body["type"], "live");
    assert!(body["audio"].get("input").is_none());
    assert_eq!(body["delegation"]["type"], "responses");
    // Required by openai.types.live.ResponsesDelegationConfigParam.
    assert_eq!(
        body["delegation"]["responses"]["model"],
        crate::openai::live::DEFAULT_DELEGATION_MODEL
    );
    assert!(
        set.iter()
            .filter(|p| p.name != "live-frontdesk")
            .all(|p| p.api == crate::calls::record::Api::Realtime)
    );
    let hinglish = set.get("hinglish-support").unwrap();
    assert_eq!(hinglish.tools.len(), 5);
    assert!(hinglish.after_call.sms.is_some());
    let restaurant = set.get("restaurant-concierge").unwrap();
    assert_eq!(restaurant.after_call.extract[0].name, "confirmation_number");
    let connect = set.get("connect-support").unwrap();
    assert_eq!(
        connect.escalation.target,
        Some(TransferTarget::parse("tel:+18885550123").unwrap())
    );
    let def = set.get("default").unwrap();
    assert!(def.is_default);
    assert!(def.greeting.is_some());
    assert!(def.escalation.enabled);
    assert_eq!(
        def.escalation.target,
        Some(TransferTarget::parse("tel:+14155550100").unwrap())
    );
    assert_eq!(
        def.escalation.phrases.find("get me a manager"),
        Some("manager")
    );
    assert!(def.instructions.contains("Example Corp"));

    let support = set.get("support").unwrap();
    let p = parties(Some("+14155550123"), Some("+18005550100"));
    assert_eq!(set.select(&p, &[]).name, "support");
    assert!(support.reject.hours.is_some());
    assert!(support.reject.blocklist.is_some());
    assert_eq!(
        support.reject.capacity.map(|c| c.max_concurrent_calls),
        Some(20)
    );
    assert_eq!(support.max_call_duration.as_secs(), 2700);
    // an unknown number goes to the default
    let other = parties(Some("+14155550123"), Some("+18005550111"));
    assert_eq!(set.select(&other, &[]).name, "default");
}

#[test]
fn minimal_profile_gets_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    profile(dir.path(), "front", DEFAULT);
    let set = load_ok(dir.path());
    let p = set.get("front").unwrap();
    assert_eq!(p.name, "front", "name from the file stem");
    assert_eq!(p.source, dir.path().join("front.toml"));
    assert_eq!(p.instructions, "You are the front agent.");
    assert_eq!(p.priority, 0);
    assert_eq!(p.greeting, None);
    assert_eq!(p.max_call_duration.as_secs(), 1800);
    assert_eq!(p.session, SessionSettings::default());
    assert_eq!(p.session.model, "gpt-realtime-2.1");
    assert_eq!(p.session.voice, "marin");
    assert!(!p.escalation.enabled, "no [escalation] table: disabled");
    assert_eq!(p.escalation.phrases.find("human please"), None);
    assert_eq!(p.reject, RejectRules::default());
    assert!(std::sync::Arc::ptr_eq(set.default_profile(), p));
}

#[test]
fn instructions_key_names_another_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.toml",
        "name = \"alpha\"\ndefault = true\ninstructions = \"common/common.md\"\n",
    );
    std::fs::create_dir(dir.path().join("common")).unwrap();
    write(dir.path(), "common/common.md", "\n\n  Shared text.  \n");
    let set = load_ok(dir.path());
    let p = set.get("alpha").unwrap();
    assert_eq!(p.instructions, "Shared text.");
    assert_eq!(p.instructions_path, dir.path().join("common/common.md"));
    assert!(set.get("a").is_none(), "the name key wins over the stem");
}

#[test]
fn from_texts_validates_like_load_without_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    profile(dir.path(), "main", "default = true\n");
    profile(
        dir.path(),
        "vip",
        "priority = 5\n[match]\ncaller = [\"+14155550123\"]\n",
    );
    let from_disk = load_ok(dir.path());
    let files = ["vip", "main"]
        .iter()
        .map(|stem| {
            let path = dir.path().join(format!("{stem}.toml"));
            let text = std::fs::read_to_string(&path).unwrap();
            (path, text)
        })
        .collect();
    let asked = std::cell::RefCell::new(Vec::new());
    let from_text = ProfileSet::from_texts(dir.path(), files, &|p: &Path| {
        asked.borrow_mut().push(p.to_path_buf());
        Ok(format!("Text of {}.", p.display()))
    })
    .unwrap();
    let names = |s: &ProfileSet| s.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&from_text), names(&from_disk));
    assert_eq!(from_text.default_profile().name, "main");
    let vip = from_text.get("vip").unwrap();
    assert_eq!(
        vip.instructions,
        format!("Text of {}.", dir.path().join("vip.md").display())
    );
    assert_eq!(asked.borrow().len(), 2, "one instructions read per profile");

    // The same problems as load: a second default, a missing instructions file.
    let bad = vec![
        (dir.path().join("a.toml"), "default = true\n".to_string()),
        (dir.path().join("b.toml"), "default = true\n".to_string()),
    ];
    let errs = ProfileSet::from_texts(dir.path(), bad, &|_: &Path| {
        Err(std::io::Error::from(std::io::ErrorKind::NotFound))
    })
    .unwrap_err()
    .0;
    assert!(
        errs.iter()
            .any(|e| e.message.contains("several profiles have default = true"))
    );
    assert!(
        errs.iter()
            .any(|e| e.message.contains("cannot read instructions file"))
    );
}

#[test]
fn selection_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    profile(d, "default", DEFAULT);
    profile(
        d,
        "sales",
        "[match]\ndialed = [\"+18005550100\", \"+18005550101\"]\n",
    );
    profile(
        d,
        "vip",
        "priority = 20\n[match]\n[[match.sip_header]]\nname = \"X-Queue\"\nequals = \"vip\"\n",
    );
    profile(
        d,
        "uk",
        "priority = 5\n[match]\ncaller_prefix = [\"+44\"]\n",
    );
    // same priority as uk: name order decides ("uk" < "uk_sales")
    profile(
        d,
        "uk_sales",
        "priority = 5\n[match]\ncaller_prefix = [\"+44\"]\ndialed = [\"+18005550100\"]\n",
    );
    profile(
        d,
        "carrier",
        "priority = 1\n[match]\n[[match.sip_header]]\nname = \"User-Agent\"\ncontains = \"Twilio\"\n[[match.sip_header]]\nname = \"X-Region\"\nregex = \"(?i)^eu-\"\n",
    );
    profile(
        d,
        "known_caller",
        "priority = 2\n[match]\ncaller = [\"+14155550123\"]\n",
    );
    let set = load_ok(d);
    assert_eq!(set.len(), 7);
    let pick = |p: &CallParties, h: &[SipHeader]| set.select(p, h).name.clone();

    // nothing matches -> default
    assert_eq!(pick(&parties(None, None), &[]), "default");
    assert_eq!(
        pick(&parties(Some("+15555550000"), Some("+18005559999")), &[]),
        "default"
    );
    // dialed match beats default (either list entry)
    assert_eq!(
        pick(&parties(Some("+15555550000"), Some("+18005550101")), &[]),
        "sales"
    );
    // caller_prefix (priority 5) beats sales (0); uk_sales also matches at 5, uk wins by name
    assert_eq!(
        pick(&parties(Some("+442071838750"), Some("+18005550100")), &[]),
        "uk"
    );
    // AND: uk_sales needs both the prefix and the dialed number; uk alone matches here
    assert_eq!(
        pick(&parties(Some("+442071838750"), Some("+18005559999")), &[]),
        "uk"
    );
    // header equals with priority 20 beats everything; header name is case-insensitive
    let vip = [SipHeader::new("x-queue", "vip")];
    assert_eq!(
        pick(&parties(Some("+442071838750"), Some("+18005550100")), &vip),
        "vip"
    );
    // equals is exact
    let not_vip = [SipHeader::new("X-Queue", "vip2")];
    assert_eq!(pick(&parties(None, None), &not_vip), "default");
    // contains
    let ua = [SipHeader::new("User-Agent", "Twilio Gateway")];
    assert_eq!(pick(&parties(None, None), &ua), "carrier");
    // regex (either rule of the list matches: OR)
    let region = [SipHeader::new("X-Region", "EU-west-1")];
    assert_eq!(pick(&parties(None, None), &region), "carrier");
    let region = [SipHeader::new("X-Region", "us-eu-1")];
    assert_eq!(pick(&parties(None, None), &region), "default");
    // caller exact, priority 2 beats carrier (1)
    assert_eq!(
        pick(&parties(Some("+14155550123"), None), &ua),
        "known_caller"
    );
}

#[test]
fn bad_profile_reports_every_problem_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    profile(d, "default", DEFAULT);
    // line numbers matter: see the assertions below
    write(
        d,
        "bad.toml",
        r#"name = "bad"
instructions = "missing.md"
[match]
dialed = ["+1800555010", "18005550100"]
caller_prefix = ["+0"]
[[match.sip_header]]
name = "X-Queue"
regex = "("
[session]
speed = 2.0
[session.turn_detection]
type = "server_vad"
threshold = 1.5
[escalation]
dtmf_key = "10"
[escalation.fallback]
target = "tel:5550123;phone-context=+1415"
[reject.hours]
timezone = "Mars/Olympus"
open = ["mon-fri 9-17", "sat 10:00-14:00"]
status = 200
[reject.blocklist]
numbers = ["+1 900 555"]
status = 700
[reject.capacity]
max_concurrent_calls = 0
"#,
    );
    let errs = load_err(d);
    has(&errs, "bad.toml", Some(2), "missing.md");
    has(&errs, "bad.toml", Some(4), "\"18005550100\"");
    has(&errs, "bad.toml", Some(5), "match.caller_prefix");
    has(&errs, "bad.toml", Some(8), "bad regex");
    has(
        &errs,
        "bad.toml",
        Some(10),
        "session.speed 2 is outside 0.25..=1.5",
    );
    has(&errs, "bad.toml", Some(13), "threshold 1.5");
    has(
        &errs,
        "bad.toml",
        Some(14),
        "escalation is enabled but has no target",
    );
    has(&errs, "bad.toml", Some(15), "dtmf_key \"10\"");
    has(&errs, "bad.toml", Some(17), "local numbers are not allowed");
    has(&errs, "bad.toml", Some(19), "\"Mars/Olympus\"");
    has(&errs, "bad.toml", Some(20), "\"mon-fri 9-17\"");
    has(&errs, "bad.toml", Some(21), "status 200");
    has(&errs, "bad.toml", Some(23), "\"+1 900 555\"");
    has(&errs, "bad.toml", Some(24), "status 700");
    has(&errs, "bad.toml", Some(26), "max_concurrent_calls 0");
    assert_eq!(errs.len(), 15, "{errs:#?}");
}

#[test]
fn errors_from_several_files_are_all_collected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    profile(d, "default", DEFAULT);
    profile(d, "syntax", "name = \"syntax\"\n\n[match\ndialed = []\n");
    profile(
        d,
        "unknown",
        "# a comment\n[match]\ndialed = [\"+18005550100\"]\ncolour = \"blue\"\n",
    );
    profile(
        d,
        "wrongtype",
        "priority = \"high\"\n[match]\ncaller = [\"+1\"]\n",
    );
    profile(
        d,
        "dup_a",
        "name = \"shared\"\n[match]\ncaller = [\"+1\"]\n",
    );
    profile(
        d,
        "dup_b",
        "# second\nname = \"shared\"\n[match]\ncaller = [\"+2\"]\n",
    );
    profile(d, "nomatch", "description = \"no rules\"\n");
    profile(
        d,
        "emptymatch",
        "description = \"x\"\n\n[match]\ndialed = []\n",
    );
    profile(d, "second_default", "# another\ndefault = true\n");
    write(d, "blank.toml", "[match]\ncaller = [\"+3\"]\n");
    write(d, "blank.md", " \n\t\n");
    write(d, "noinstr.toml", "[match]\ncaller = [\"+4\"]\n");
    profile(
        d,
        "badname",
        "name = \"has space\"\n[match]\ncaller = [\"+5\"]\n",
    );
    write(d, "notes.txt", "not a profile");
    write(d, ".editor-backup.toml", "this is = = not toml");

    let errs = load_err(d);
    has(&errs, "syntax.toml", Some(3), "");
    has(&errs, "unknown.toml", Some(4), "unknown field `colour`");
    has(&errs, "wrongtype.toml", Some(1), "invalid type");
    has(
        &errs,
        "dup_a.toml",
        Some(1),
        "duplicate profile name \"shared\"",
    );
    has(
        &errs,
        "dup_b.toml",
        Some(2),
        "duplicate profile name \"shared\"",
    );
    has(&errs, "nomatch.toml", None, "no [match] rules");
    has(&errs, "emptymatch.toml", Some(3), "no [match] rules");
    has(
        &errs,
        "default.toml",
        Some(1),
        "several profiles have default = true",
    );
    has(
        &errs,
        "second_default.toml",
        Some(2),
        "several profiles have default = true",
    );
    has(&errs, "blank.toml", None, "is empty");
    has(&errs, "noinstr.toml", None, "noinstr.md");
    has(&errs, "badname.toml", Some(1), "\"has space\"");
    assert_eq!(errs.len(), 12, "{errs:#?}");
    // sorted by file, then line
    let files: Vec<&str> = errs.iter().map(|(f, _, _)| f.as_str()).collect();
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted);
}

#[test]
fn zero_defaults_and_empty_or_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let errs = load_err(dir.path());
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].1, None);
    assert!(errs[0].2.contains("no *.toml profiles"), "{errs:?}");

    profile(
        dir.path(),
        "sales",
        "[match]\ndialed = [\"+18005550100\"]\n",
    );
    let errs = load_err(dir.path());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].2.contains("no profile has default = true"));

    let missing = dir.path().join("nope");
    let err = ProfileSet::load(&missing).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert_eq!(err.0[0].file, missing);
    assert!(
        err.0[0]
            .message
            .contains("cannot read the profile directory")
    );
}

#[test]
fn load_errors_display_as_file_line_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    profile(d, "default", "default = true\n[session]\nspeed = 9.0\n");
    let err = ProfileSet::load(d).unwrap_err();
    let path = d.join("default.toml");
    assert_eq!(
        err.to_string(),
        format!(
            "{}:3: session.speed 9 is outside 0.25..=1.5",
            path.display()
        )
    );
    let two = LoadErrors(vec![
        LoadError {
            file: "prompts/x.toml".into(),
            line: Some(12),
            message: "first".into(),
        },
        LoadError {
            file: "prompts".into(),
            line: None,
            message: "second".into(),
        },
    ]);
    assert_eq!(two.to_string(), "prompts/x.toml:12: first\nprompts: second");
}

#[test]
fn turn_detection_and_header_rule_shape_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    profile(
        d,
        "default",
        r#"default = true
[session.turn_detection]
type = "semantic_vad"
silence_duration_ms = 500
[[match.sip_header]]
name = "X-A"
equals = "1"
contains = "2"
[[match.sip_header]]
name = "X-B"
"#,
    );
    let errs = load_err(d);
    has(&errs, "default.toml", Some(2), "server_vad settings");
    has(
        &errs,
        "default.toml",
        Some(5),
        "exactly one of equals, contains or regex",
    );
    has(
        &errs,
        "default.toml",
        Some(9),
        "exactly one of equals, contains or regex",
    );
    assert_eq!(errs.len(), 3, "{errs:#?}");

    profile(
        d,
        "default",
        "default = true\n[session]\nnoise_reduction = \"mid_field\"\n",
    );
    let errs = load_err(d);
    has(
        &errs,
        "default.toml",
        Some(3),
        "unknown variant `mid_field`",
    );
}

#[test]
fn escalation_settings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    profile(
        d,
        "default",
        r#"default = true
[escalation]
target = "sip:agent@connect.example.com;transport=tls"
default_phrases = false
phrases = ["manager", "billing team"]
dtmf_key = "b"
[escalation.fallback]
target = "tel:+1-415-555-0100"
"#,
    );
    let set = load_ok(d);
    let esc = &set.default_profile().escalation;
    assert!(esc.enabled);
    assert_eq!(
        esc.target.as_ref().unwrap().as_uri(),
        "sip:agent@connect.example.com;transport=tls"
    );
    assert_eq!(
        esc.fallback_target.as_ref().unwrap().as_uri(),
        "tel:+14155550100"
    );
    assert_eq!(esc.dtmf_key, Some('B'));
    assert_eq!(esc.handoff_line, DEFAULT_HANDOFF_LINE);
    assert_eq!(esc.apology, DEFAULT_APOLOGY);
    assert_eq!(esc.phrases.find("a human please"), None, "defaults off");
    assert_eq!(
        esc.phrases.find("the Billing-Team please"),
        Some("billing team")
    );

    // disabled: no target needed, no phrases, no transfer tool
    profile(
        d,
        "default",
        "default = true\n[escalation]\nenabled = false\n",
    );
    let set = load_ok(d);
    let p = set.default_profile();
    assert!(!p.escalation.enabled);
    assert!(p.escalation.phrases.is_empty());
    let tools = p.realtime_session()["tools"].clone();
    assert_eq!(tools.as_array().unwrap().len(), 1);
    assert_eq!(tools[0]["name"], TOOL_END_CALL);
}

fn hours_profile(dir: &Path) -> ProfileSet {
    profile(
        dir,
        "default",
        r#"default = true
[reject.hours]
timezone = "America/New_York"
open = ["mon-fri 09:00-17:00", "sat 10:00-14:00"]
"#,
    );
    load_ok(dir)
}

#[test]
fn admission_hours_follow_the_time_zone_across_dst() {
    let dir = tempfile::tempdir().unwrap();
    let set = hours_profile(dir.path());
    let p = set.default_profile();
    let who = parties(Some("+14155550123"), None);
    let closed = Admission::Reject {
        status: 480,
        reason: RejectReason::ClosedHours,
    };
    let at = |t| p.admission(&who, t, 0);
    // Fri 2026-03-06, EST (UTC-5): 08:30 closed, 09:30 open, 16:59 open, 17:00 closed
    assert_eq!(at(utc(2026, 3, 6, 13, 30)), closed);
    assert_eq!(at(utc(2026, 3, 6, 14, 30)), Admission::Accept);
    assert_eq!(at(utc(2026, 3, 6, 21, 59)), Admission::Accept);
    assert_eq!(at(utc(2026, 3, 6, 22, 0)), closed);
    // DST starts Sun 2026-03-08. Mon 2026-03-09, EDT (UTC-4): 13:30Z is 09:30 local -> open
    // (it would be 08:30 with the winter offset), 21:00Z is 17:00 local -> closed.
    assert_eq!(at(utc(2026, 3, 9, 13, 30)), Admission::Accept);
    assert_eq!(at(utc(2026, 3, 9, 12, 59)), closed);
    assert_eq!(at(utc(2026, 3, 9, 20, 59)), Admission::Accept);
    assert_eq!(at(utc(2026, 3, 9, 21, 0)), closed);
    // Saturday window: Sat 2026-03-07 15:00Z = 10:00 EST open; 19:00Z = 14:00 closed
    assert_eq!(at(utc(2026, 3, 7, 15, 0)), Admission::Accept);
    assert_eq!(at(utc(2026, 3, 7, 19, 0)), closed);
    // the weekday is the local one: Tue 2026-03-10 02:00Z is Mon 22:00 EDT -> closed, and
    // Sat 2026-03-14 02:00Z is Fri 22:00 -> closed; Sun is always closed
    assert_eq!(at(utc(2026, 3, 10, 2, 0)), closed);
    assert_eq!(at(utc(2026, 3, 14, 2, 0)), closed);
    assert_eq!(at(utc(2026, 3, 8, 16, 0)), closed);
    // DST ends Sun 2026-11-01: Mon 2026-11-02 14:30Z is 09:30 EST -> open, 13:30Z closed
    assert_eq!(at(utc(2026, 11, 2, 14, 30)), Admission::Accept);
    assert_eq!(at(utc(2026, 11, 2, 13, 30)), closed);
}

#[test]
fn admission_checks_blocklist_then_hours_then_capacity() {
    let dir = tempfile::tempdir().unwrap();
    profile(
        dir.path(),
        "default",
        r#"default = true
[reject.hours]
timezone = "Europe/London"
open = ["mon-sun 00:00-12:00"]
status = 404
[reject.blocklist]
numbers = ["+14155550199"]
prefixes = ["+1900"]
[reject.capacity]
max_concurrent_calls = 2
"#,
    );
    let set = load_ok(dir.path());
    let p = set.default_profile();
    let open = utc(2026, 1, 5, 10, 0);
    let closed = utc(2026, 1, 5, 13, 0);
    let blocked = Admission::Reject {
        status: 603,
        reason: RejectReason::BlockedCaller,
    };
    let ok = parties(Some("+14155550123"), None);

    assert_eq!(p.admission(&ok, open, 0), Admission::Accept);
    assert_eq!(p.admission(&ok, open, 1), Admission::Accept);
    assert_eq!(
        p.admission(&ok, open, 2),
        Admission::Reject {
            status: 486,
            reason: RejectReason::OverCapacity
        }
    );
    assert_eq!(
        p.admission(&parties(Some("+14155550199"), None), open, 0),
        blocked
    );
    assert_eq!(
        p.admission(&parties(Some("+19005550100"), None), open, 0),
        blocked
    );
    // blocklist wins over hours and capacity
    assert_eq!(
        p.admission(&parties(Some("+19005550100"), None), closed, 5),
        blocked
    );
    // hours win over capacity; custom status
    assert_eq!(
        p.admission(&ok, closed, 5),
        Admission::Reject {
            status: 404,
            reason: RejectReason::ClosedHours
        }
    );
    // an anonymous caller is not blocked
    assert_eq!(
        p.admission(&parties(None, None), open, 0),
        Admission::Accept
    );
    assert_eq!(RejectReason::BlockedCaller.as_str(), "blocked_caller");
    assert_eq!(RejectReason::ClosedHours.as_str(), "closed_hours");
    assert_eq!(RejectReason::OverCapacity.to_string(), "over_capacity");
}

#[test]
fn realtime_session_json_shape() {
    let dir = tempfile::tempdir().unwrap();
    profile(
        dir.path(),
        "default",
        r#"default = true
[session]
model = "gpt-realtime-2.1-mini"
voice = "cedar"
speed = 1.25
language = "de"
noise_reduction = "far_field"
[escalation]
target = "tel:+14155550100"
"#,
    );
    let set = load_ok(dir.path());
    let body = set.default_profile().realtime_session();
    assert_eq!(body["type"], "realtime");
    assert_eq!(body["model"], "gpt-realtime-2.1-mini");
    assert_eq!(body["instructions"], "You are the default agent.");
    assert_eq!(body["output_modalities"], json!(["audio"]));
    assert_eq!(
        body["audio"]["input"]["transcription"],
        json!({"model": "gpt-4o-mini-transcribe", "language": "de"})
    );
    assert_eq!(
        body["audio"]["input"]["turn_detection"],
        json!({"type": "semantic_vad", "eagerness": "auto", "create_response": true, "interrupt_response": true})
    );
    assert_eq!(
        body["audio"]["input"]["noise_reduction"],
        json!({"type": "far_field"})
    );
    assert_eq!(
        body["audio"]["output"],
        json!({"voice": "cedar", "speed": 1.25})
    );
    assert!(body["audio"]["input"].get("format").is_none());
    assert!(body["audio"]["output"].get("format").is_none());
    assert_eq!(body["tool_choice"], "auto");
    let tools = body["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, [TOOL_TRANSFER_TO_HUMAN, TOOL_END_CALL]);
    for t in tools {
        assert_eq!(t["type"], "function");
        assert_eq!(t["parameters"]["type"], "object");
        assert_eq!(t["parameters"]["properties"]["reason"]["type"], "string");
        assert!(t["description"].as_str().is_some_and(|d| !d.is_empty()));
    }
    assert_eq!(tools[0]["parameters"]["required"], json!(["reason"]));
    assert!(tools[1]["parameters"].get("required").is_none());
}

#[test]
fn realtime_session_minimal_and_turn_detection_variants() {
    let dir = tempfile::tempdir().unwrap();
    profile(dir.path(), "default", DEFAULT);
    let body = load_ok(dir.path()).default_profile().realtime_session();
    assert_eq!(
        body["audio"]["input"]["transcription"],
        json!({"model": "gpt-4o-mini-transcribe"}),
        "transcription is always on, no language unless set"
    );
    assert!(body["audio"]["input"].get("noise_reduction").is_none());
    assert_eq!(body["audio"]["output"], json!({"voice": "marin"}));
    assert_eq!(body["tools"].as_array().unwrap().len(), 1);

    profile(
        dir.path(),
        "default",
        "default = true\n[session.turn_detection]\ntype = \"none\"\n",
    );
    let body = load_ok(dir.path()).default_profile().realtime_session();
    let input = body["audio"]["input"].as_object().unwrap();
    assert_eq!(input.get("turn_detection"), Some(&serde_json::Value::Null));

    profile(
        dir.path(),
        "default",
        "default = true\n[session.turn_detection]\ntype = \"server_vad\"\nthreshold = 0.7\nsilence_duration_ms = 800\nidle_timeout_ms = 6000\n",
    );
    let body = load_ok(dir.path()).default_profile().realtime_session();
    assert_eq!(
        body["audio"]["input"]["turn_detection"],
        json!({"type": "server_vad", "threshold": 0.7, "silence_duration_ms": 800,
               "idle_timeout_ms": 6000, "create_response": true, "interrupt_response": true})
    );
}

/// A default profile with escalation and `tools` appended (a TOML snippet after the tables).
fn tools_profile(dir: &Path, top: &str, tools: &str) {
    profile(
        dir,
        "t",
        &format!("default = true\n{top}\n[escalation]\ntarget = \"tel:+14155550100\"\n{tools}"),
    );
}

const ORDER_TOOL: &str = r#"
[[tools]]
name = "lookup_order"
description = "Look up an order."
parameters = { type = "object", properties = { order_id = { type = "string" } }, required = ["order_id"] }
http = { url = "{{base_url}}/orders/{{args.order_id}}", headers = { Authorization = "Bearer {{secret:orders_token}}" } }
"#;

#[test]
fn tools_load_into_the_session() {
    let dir = tempfile::tempdir().unwrap();
    tools_profile(
        dir.path(),
        "tools_base_url = \"https://api.example.com/v1/\"\nfiller_line = \"Hold on.\"",
        &format!(
            "{ORDER_TOOL}\n[[tools]]\nbuiltin = \"end_call\"\ndescription = \"Hang up politely.\"\n[[tools]]\nbuiltin = \"lookup_call_history\"\n"
        ),
    );
    let set = load_ok(dir.path());
    let p = set.get("t").unwrap();
    assert_eq!(
        p.tools_base_url.as_deref(),
        Some("https://api.example.com/v1")
    );
    assert_eq!(p.filler_line.as_deref(), Some("Hold on."));
    let order = p.tools.get("lookup_order").unwrap();
    assert_eq!(order.secret_names(), ["orders_token"]);
    assert!(order.check_arguments(r#"{"order_id":"A1"}"#).is_ok());
    let problems = order.check_arguments(r#"{"order_id":5}"#).unwrap_err();
    assert!(problems[0].starts_with("/order_id"), "{problems:?}");
    assert!(order.check_arguments("not json").is_err());
    let body = p.realtime_session();
    let names: Vec<&str> = body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "transfer_to_human",
            "end_call",
            "lookup_order",
            "lookup_call_history"
        ]
    );
    assert_eq!(body["tools"][1]["description"], "Hang up politely.");
    assert_eq!(
        body["tools"][2]["parameters"]["required"],
        json!(["order_id"])
    );
    assert_eq!(
        body["tools"][3]["parameters"]["properties"]["limit"]["maximum"],
        10
    );
}

#[test]
fn tool_definition_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[[tools]]
name = "bad name"
description = "x"
http = { url = "https://a.example.com/" }

[[tools]]
name = "undeclared"
description = "x"
parameters = { type = "object", properties = { a = { type = "string" } } }
http = { url = "https://a.example.com/{{args.b}}" }

[[tools]]
name = "literal_token"
description = "x"
http = { url = "https://a.example.com/", headers = { Authorization = "Bearer sk_live_4eC39HqLyjWDarjtT1zdp7dc" } }

[[tools]]
name = "no_base"
description = "x"
http = { url = "{{base_url}}/x" }

[[tools]]
name = "bad_schema"
description = "x"
parameters = { type = "object", properties = { a = { type = "strnig" } } }
http = { url = "https://a.example.com/" }

[[tools]]
name = "not_object"
description = "x"
parameters = { type = "string" }
http = { url = "https://a.example.com/" }

[[tools]]
name = "secret_in_url"
description = "x"
http = { url = "https://a.example.com/{{secret:tok}}" }

[[tools]]
name = "key_in_query"
description = "x"
http = { url = "https://a.example.com/x?api_key=abc" }

[[tools]]
name = "ftp"
description = "x"
http = { url = "ftp://a.example.com/x" }

[[tools]]
name = "no_description"
http = { url = "https://a.example.com/" }

[[tools]]
builtin = "teleport"

[[tools]]
builtin = "send_dtmf"
parameters = { type = "object" }

[[tools]]
name = "dup"
description = "x"
http = { url = "https://a.example.com/" }
[[tools]]
name = "dup"
description = "y"
http = { url = "https://a.example.com/" }

[[tools]]
name = "unknown_placeholder"
description = "x"
http = { url = "https://a.example.com/{{env:HOME}}" }
"#;
    profile(dir.path(), "t", &format!("default = true\n{text}"));
    let errs = load_err(dir.path());
    let line = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 2) // + the "default = true" line, 1-based
            .unwrap()
    };
    has(
        &errs,
        "t.toml",
        Some(line("name = \"bad name\"")),
        "must be 1-64",
    );
    has(
        &errs,
        "t.toml",
        Some(line("{{args.b}}")),
        "{{args.b}} is not a declared parameter",
    );
    has(
        &errs,
        "t.toml",
        Some(line("sk_live")),
        "must take it from a secret",
    );
    has(
        &errs,
        "t.toml",
        Some(line("{{base_url}}/x")),
        "no tools_base_url",
    );
    has(
        &errs,
        "t.toml",
        Some(line("strnig")),
        "not a valid JSON Schema",
    );
    has(
        &errs,
        "t.toml",
        Some(line("parameters = { type = \"string\" }")),
        "type = \"object\"",
    );
    has(
        &errs,
        "t.toml",
        Some(line("{{secret:tok}}")),
        "secrets go in headers only",
    );
    has(
        &errs,
        "t.toml",
        Some(line("api_key=abc")),
        "credential parameter",
    );
    has(
        &errs,
        "t.toml",
        Some(line("ftp://")),
        "must be http or https",
    );
    has(
        &errs,
        "t.toml",
        Some(line("name = \"no_description\"") - 1),
        "needs a `description`",
    );
    has(&errs, "t.toml", Some(line("teleport")), "is not one of");
    has(
        &errs,
        "t.toml",
        Some(line("parameters = { type = \"object\" }")),
        "are fixed",
    );
    has(
        &errs,
        "t.toml",
        Some(line("description = \"y\"") - 2),
        "\"dup\" is declared twice",
    );
    assert_eq!(
        errs.iter().filter(|e| e.2.contains("no_base")).count(),
        1,
        "one error for a url without its base: {errs:#?}"
    );
    has(
        &errs,
        "t.toml",
        Some(line("{{env:HOME}}")),
        "unknown placeholder",
    );
    // no [escalation]: transfer_to_human cannot be declared
    let dir2 = tempfile::tempdir().unwrap();
    profile(
        dir2.path(),
        "u",
        "default = true\n[[tools]]\nbuiltin = \"transfer_to_human\"\n",
    );
    has(
        &load_err(dir2.path()),
        "u.toml",
        Some(3),
        "needs an enabled [escalation]",
    );
}

#[test]
fn after_call_settings_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    profile(
        dir.path(),
        "a",
        r#"default = true
[after_call]
summary = false
[[after_call.extract]]
name = "conf"
regex = '(?i)code is ([A-Z0-9]+)'
from = "caller"
[[after_call.extract]]
name = "bad"
regex = '(unclosed'
[[after_call.extract]]
name = "who"
regex = 'x'
from = "robot"
[after_call.sms]
template = "Ref {{extract.conf}} {{extract.nope}} {{args.x}}"
require = ["conf", "ghost"]
allow_transcript_fields = true
"#,
    );
    let errs = load_err(dir.path());
    has(&errs, "a.toml", Some(10), "bad regex");
    has(&errs, "a.toml", Some(14), "must be caller, agent or any");
    has(&errs, "a.toml", Some(16), "{{extract.nope}} names no");
    has(&errs, "a.toml", Some(16), "not allowed in an SMS");
    has(&errs, "a.toml", Some(17), "\"ghost\" names no");

    let dir = tempfile::tempdir().unwrap();
    profile(
        dir.path(),
        "a",
        "default = true\n[after_call]\nsummary = false\n[[after_call.extract]]\nname = \"conf\"\nregex = 'code is ([A-Z0-9]+)'\n[after_call.sms]\ntemplate = \"Ref {{extract.conf}}\"\nrequire = [\"conf\"]\nallow_transcript_fields = true\n",
    );
    let set = load_ok(dir.path());
    let a = &set.get("a").unwrap().after_call;
    assert!(!a.summary);
    assert_eq!(a.extract[0].from, ExtractFrom::Any);
    assert_eq!(a.sms.as_ref().unwrap().require, ["conf"]);
    assert!(a.sms.as_ref().unwrap().allow_transcript_fields);

    // Without the opt-in, transcript-derived fields are refused (each one, with its line);
    // fields we control load.
    let dir = tempfile::tempdir().unwrap();
    profile(
        dir.path(),
        "a",
        "default = true\n[[after_call.extract]]\nname = \"conf\"\nregex = 'code is ([A-Z0-9]+)'\n[after_call.sms]\ntemplate = \"Thanks. {{summary.intent}} {{extract.conf}}\"\n",
    );
    let errs = load_err(dir.path());
    has(
        &errs,
        "a.toml",
        Some(6),
        "{{summary...}} is taken from what was said",
    );
    has(
        &errs,
        "a.toml",
        Some(6),
        "{{extract...}} is taken from what was said",
    );
    let dir = tempfile::tempdir().unwrap();
    profile(
        dir.path(),
        "a",
        "default = true\n[after_call.sms]\ntemplate = \"Thanks for calling {{call.dialed}}. Reply STOP to opt out.\"\n",
    );
    let set = load_ok(dir.path());
    assert!(
        !set.get("a")
            .unwrap()
            .after_call
            .sms
            .as_ref()
            .unwrap()
            .allow_transcript_fields
    );
}

#[test]
fn readme_profile_example_loads() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let start = readme
        .find("# prompts/orders.toml")
        .expect("README has the example");
    let end = start + readme[start..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    profile(dir.path(), "orders", &readme[start..end]);
    profile(dir.path(), "main", DEFAULT);
    let set = load_ok(dir.path());
    let orders = set.get("orders").unwrap();
    assert_eq!(orders.tools.len(), 3);
    assert_eq!(orders.after_call.extract[0].name, "ticket");
    assert!(orders.after_call.sms.is_some());
}

#[test]
fn live_delegation_carries_its_responses_model() {
    // openai.types.live.ResponsesDelegationConfigParam requires `model`.
    let dir = tempfile::tempdir().unwrap();
    profile(dir.path(), "front", DEFAULT);
    profile(
        dir.path(),
        "live",
        "api = \"live\"\n[match]\ndialed = [\"+18005550111\"]\n[session]\ndelegation_model = \"gpt-5.4\"\n",
    );
    let set = load_ok(dir.path());
    let body = set.get("live").unwrap().live_session();
    assert_eq!(body["delegation"]["type"], "responses");
    assert_eq!(body["delegation"]["responses"]["model"], "gpt-5.4");

    // A Realtime profile has no delegation: the key is refused, with its line.
    profile(
        dir.path(),
        "rt",
        "[match]\ndialed = [\"+18005550112\"]\n[session]\ndelegation_model = \"gpt-5.4\"\n",
    );
    let errs = load_err(dir.path());
    has(&errs, "rt.toml", Some(4), "GPT-Live setting");
}

#[test]
fn tel_transfer_targets_must_be_dialable_numbers() {
    let dir = tempfile::tempdir().unwrap();
    profile(
        dir.path(),
        "short",
        "default = true\n[escalation]\ntarget = \"tel:+1234567\"\n\
         [escalation.fallback]\ntarget = \"tel:+12345678\"\n",
    );
    let errs = load_err(dir.path());
    has(
        &errs,
        "short.toml",
        Some(3),
        "escalation.target: +1234567 is too short to dial",
    );
    assert!(
        !errs.iter().any(|(_, _, m)| m.contains("fallback")),
        "8 digits is dialable: {errs:#?}"
    );
}
