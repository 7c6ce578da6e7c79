//! The Twilio REST client against the fake (Twilio's Call resource): exact form fields and Basic
//! auth for create/update call and messages, the TwiML sent, error JSON mapping, no retries.

mod support;

use std::time::Duration;

use base64::Engine as _;
use support::fake_twilio::{ACCOUNT_SID, AUTH_TOKEN, FakeTwilio};
use voxmachina::config::Secret;
use voxmachina::twilio::rest::{CallInstructions, CallUpdate, CreateCall, TwilioError, TwilioRest};
use voxmachina::twilio::twiml::{Dial, Number, Response, Stream};

fn client(fake: &FakeTwilio) -> TwilioRest {
    TwilioRest::new(
        &fake.base_url,
        fake.account_sid(),
        fake.auth_token(),
        Duration::from_secs(5),
    )
    .unwrap()
}

fn stream_twiml() -> String {
    Response::new()
        .connect_stream(
            Stream::new("wss://x.example/media")
                .unwrap()
                .parameter("t", "1")
                .unwrap(),
        )
        .render()
}

#[tokio::test]
async fn create_call_sends_the_documented_form_with_basic_auth() {
    let fake = FakeTwilio::start().await;
    let twiml = stream_twiml();
    let req = CreateCall::new(
        "+15558675310",
        "+15017122661",
        CallInstructions::Twiml(twiml.clone()),
    )
    .status_callback(
        "https://x.example/status",
        ["initiated", "answered", "completed"],
    );
    let call = client(&fake).create_call(&req).await.unwrap();

    assert!(
        call.sid.starts_with("CA") && call.sid.len() == 34,
        "{}",
        call.sid
    );
    assert_eq!(call.status, "queued");
    assert_eq!(call.account_sid, ACCOUNT_SID);
    assert_eq!(call.to.as_deref(), Some("+15558675310"));
    assert_eq!(call.direction.as_deref(), Some("outbound-api"));

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.path,
        format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json")
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let expected_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT_SID}:{AUTH_TOKEN}"))
    );
    assert_eq!(r.header("authorization"), Some(expected_auth.as_str()));
    assert_eq!(
        r.field_names(),
        [
            "To",
            "From",
            "Twiml",
            "StatusCallback",
            "StatusCallbackEvent",
            "StatusCallbackEvent",
            "StatusCallbackEvent"
        ]
    );
    assert_eq!(r.field("To"), Some("+15558675310"));
    assert_eq!(r.field("From"), Some("+15017122661"));
    assert_eq!(r.field("Twiml"), Some(twiml.as_str()));
    assert_eq!(
        r.fields("StatusCallbackEvent"),
        ["initiated", "answered", "completed"]
    );
    // `+` must travel percent-encoded, not as a space.
    assert!(r.body.contains("To=%2B15558675310"), "{}", r.body);
    assert_eq!(
        fake.call(&call.sid).unwrap().twiml.as_deref(),
        Some(twiml.as_str())
    );
}

#[tokio::test]
async fn create_call_with_url_method_timeout_and_send_digits() {
    let fake = FakeTwilio::start().await;
    let mut req = CreateCall::new(
        "sip:agent@pbx.example.com",
        "+15017122661",
        CallInstructions::Url {
            url: "https://x.example/twiml?a=1&b=2".into(),
            method: Some("GET".into()),
        },
    );
    req.timeout_secs = Some(20);
    req.send_digits = Some("W1234#".into());
    client(&fake).create_call(&req).await.unwrap();
    let r = &fake.requests()[0];
    assert_eq!(
        r.field_names(),
        ["To", "From", "Url", "Method", "Timeout", "SendDigits"]
    );
    assert_eq!(r.field("Url"), Some("https://x.example/twiml?a=1&b=2"));
    assert_eq!(r.field("Method"), Some("GET"));
    assert_eq!(r.field("Timeout"), Some("20"));
    assert_eq!(r.field("SendDigits"), Some("W1234#"));
    assert!(r.body.contains("SendDigits=W1234%23"), "{}", r.body);
}

#[tokio::test]
async fn api_key_auth() {
    let fake = FakeTwilio::start().await;
    fake.add_api_key("SK0123", "key-secret");
    let rest = TwilioRest::with_api_key(
        &fake.base_url,
        ACCOUNT_SID,
        "SK0123",
        Secret::new("key-secret"),
        Duration::from_secs(5),
    )
    .unwrap();
    rest.send_message("+15558675310", "+15017122661", "hi")
        .await
        .unwrap();
    let r = &fake.requests()[0];
    assert_eq!(
        r.basic_auth(),
        Some(("SK0123".to_string(), "key-secret".to_string()))
    );
    assert_eq!(
        r.path,
        format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json")
    );
}

#[tokio::test]
async fn wrong_credentials_map_to_twilio_401() {
    let fake = FakeTwilio::start().await;
    let rest = TwilioRest::new(
        &fake.base_url,
        ACCOUNT_SID,
        Secret::new("wrong"),
        Duration::from_secs(5),
    )
    .unwrap();
    let req = CreateCall::new(
        "+15558675310",
        "+15017122661",
        CallInstructions::Twiml("<Response/>".into()),
    );
    let Err(TwilioError::Api(e)) = rest.create_call(&req).await else {
        panic!("expected an API error")
    };
    assert_eq!((e.status, e.code), (401, Some(20003)));
    assert_eq!(e.message, "Authenticate");
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn invalid_to_maps_the_error_json() {
    let fake = FakeTwilio::start().await;
    let req = CreateCall::new(
        "5551234567",
        "+15017122661",
        CallInstructions::Twiml("<Response/>".into()),
    );
    let err = client(&fake).create_call(&req).await.unwrap_err();
    let TwilioError::Api(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(e.status, 400);
    assert_eq!(e.code, Some(21211));
    assert_eq!(
        e.message,
        "The 'To' number 5551234567 is not a valid phone number."
    );
    assert_eq!(
        e.more_info.as_deref(),
        Some("https://www.twilio.com/docs/errors/21211")
    );
    assert_eq!(
        err.to_string(),
        "Twilio answered 400 (error 21211): The 'To' number 5551234567 is not a valid phone number."
    );
}

#[tokio::test]
async fn injected_failures_are_not_retried() {
    let fake = FakeTwilio::start().await;
    fake.fail_next(503, 20500, "Service Unavailable");
    let req = CreateCall::new(
        "+15558675310",
        "+15017122661",
        CallInstructions::Twiml("<Response/>".into()),
    );
    let rest = client(&fake);
    let Err(TwilioError::Api(e)) = rest.create_call(&req).await else {
        panic!("expected an API error")
    };
    assert_eq!((e.status, e.code), (503, Some(20500)));
    assert_eq!(fake.requests().len(), 1, "creating a call is never retried");
    assert!(fake.calls().is_empty());
    // The failure was consumed: the next attempt (the caller's decision) succeeds.
    rest.create_call(&req).await.unwrap();
    assert_eq!(fake.calls().len(), 1);
}

#[tokio::test]
async fn local_refusals_send_nothing() {
    let fake = FakeTwilio::start().await;
    let rest = client(&fake);
    let long = CreateCall::new(
        "+15558675310",
        "+15017122661",
        CallInstructions::Twiml("x".repeat(4001)),
    );
    assert!(matches!(
        rest.create_call(&long).await,
        Err(TwilioError::Invalid(_))
    ));
    assert!(matches!(
        rest.update_call("CA1", &CallUpdate::Twiml("x".repeat(4001)))
            .await,
        Err(TwilioError::Invalid(_))
    ));
    assert!(matches!(
        rest.send_message("+15558675310", "+15017122661", "").await,
        Err(TwilioError::Invalid(_))
    ));
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn update_call_redirects_to_dial_with_send_digits() {
    let fake = FakeTwilio::start().await;
    let rest = client(&fake);
    let call = rest
        .create_call(&CreateCall::new(
            "+15558675310",
            "+15017122661",
            CallInstructions::Twiml(stream_twiml()),
        ))
        .await
        .unwrap();
    fake.set_call_status(&call.sid, "in-progress");
    let handoff = Response::new()
        .dial(Dial::new(
            Number::new("+18005550100")
                .unwrap()
                .send_digits("wwww123456#")
                .unwrap(),
        ))
        .render();
    let updated = rest
        .update_call(&call.sid, &CallUpdate::Twiml(handoff.clone()))
        .await
        .unwrap();
    assert_eq!(updated.sid, call.sid);
    assert_eq!(updated.status, "in-progress");

    let r = fake.requests().pop().unwrap();
    assert_eq!(
        r.path,
        format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{}.json", call.sid)
    );
    assert_eq!(r.form, [("Twiml".to_string(), handoff.clone())]);
    assert!(r.basic_auth().is_some());
    assert_eq!(
        fake.call(&call.sid).unwrap().twiml.as_deref(),
        Some(handoff.as_str())
    );
}

#[tokio::test]
async fn update_call_url_and_hangup() {
    let fake = FakeTwilio::start().await;
    let rest = client(&fake);
    let call = rest
        .create_call(&CreateCall::new(
            "+15558675310",
            "+15017122661",
            CallInstructions::Twiml("<Response/>".into()),
        ))
        .await
        .unwrap();
    rest.update_call(
        &call.sid,
        &CallUpdate::Url {
            url: "https://x.example/next".into(),
            method: Some("POST".into()),
        },
    )
    .await
    .unwrap();
    let r = fake.requests().pop().unwrap();
    assert_eq!(
        r.form,
        [
            ("Url".to_string(), "https://x.example/next".to_string()),
            ("Method".to_string(), "POST".to_string())
        ]
    );

    let ended = rest
        .update_call(&call.sid, &CallUpdate::Complete)
        .await
        .unwrap();
    assert_eq!(ended.status, "completed");
    let r = fake.requests().pop().unwrap();
    assert_eq!(r.form, [("Status".to_string(), "completed".to_string())]);

    // Redirecting an ended call is refused by Twilio.
    let Err(TwilioError::Api(e)) = rest
        .update_call(&call.sid, &CallUpdate::Twiml("<Response/>".into()))
        .await
    else {
        panic!("expected an API error")
    };
    assert_eq!((e.status, e.code), (400, Some(21220)));
}

#[tokio::test]
async fn cancel_a_queued_call_and_unknown_call() {
    let fake = FakeTwilio::start().await;
    let rest = client(&fake);
    let call = rest
        .create_call(&CreateCall::new(
            "client:alice",
            "+15017122661",
            CallInstructions::ApplicationSid("AP123".into()),
        ))
        .await
        .unwrap();
    assert_eq!(fake.requests()[0].field("ApplicationSid"), Some("AP123"));
    let c = rest
        .update_call(&call.sid, &CallUpdate::Cancel)
        .await
        .unwrap();
    assert_eq!(c.status, "canceled");
    assert_eq!(
        fake.requests().pop().unwrap().form,
        [("Status".to_string(), "canceled".to_string())]
    );

    let Err(TwilioError::Api(e)) = rest
        .update_call("CA00000000000000000000000000000000", &CallUpdate::Complete)
        .await
    else {
        panic!("expected an API error")
    };
    assert_eq!((e.status, e.code), (404, Some(20404)));
}

#[tokio::test]
async fn send_message_form_and_answer() {
    let fake = FakeTwilio::start().await;
    let msg = client(&fake)
        .send_message(
            "+15558675310",
            "+15017122661",
            "Your ticket is 42 & counting",
        )
        .await
        .unwrap();
    assert!(msg.sid.starts_with("SM"), "{}", msg.sid);
    assert_eq!(msg.status, "queued");
    assert_eq!(msg.body.as_deref(), Some("Your ticket is 42 & counting"));
    let r = &fake.requests()[0];
    assert_eq!(r.field_names(), ["To", "From", "Body"]);
    assert_eq!(r.field("Body"), Some("Your ticket is 42 & counting"));
    assert_eq!(fake.messages().len(), 1);
}

#[tokio::test]
async fn transport_errors_and_bad_base_url() {
    // A base URL nobody listens on: a transport error, not a panic.
    let rest = TwilioRest::new(
        "http://127.0.0.1:9",
        ACCOUNT_SID,
        Secret::new(AUTH_TOKEN),
        Duration::from_secs(2),
    )
    .unwrap();
    let req = CreateCall::new(
        "+15558675310",
        "+15017122661",
        CallInstructions::Twiml("<Response/>".into()),
    );
    let err = rest.create_call(&req).await.unwrap_err();
    assert!(
        matches!(err, TwilioError::Transport(_) | TwilioError::Timeout),
        "{err:?}"
    );
    assert!(
        TwilioRest::new(
            "ftp://x",
            ACCOUNT_SID,
            Secret::new("t"),
            Duration::from_secs(1)
        )
        .is_err()
    );
}

#[test]
fn debug_output_does_not_leak_the_token() {
    let rest = TwilioRest::new(
        "https://api.twilio.com",
        ACCOUNT_SID,
        Secret::new(AUTH_TOKEN),
        Duration::from_secs(1),
    )
    .unwrap();
    let debug = format!("{rest:?}");
    assert!(!debug.contains(AUTH_TOKEN), "{debug}");
}
