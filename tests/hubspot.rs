//! The HubSpot client against FakeHubSpot (HubSpot CRM v3 docs): exact request bodies,
//! bearer auth, find-or-create, ticket associations, 429 handling.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::fake_hubspot::{FakeHubSpot, TOKEN};
use voxmachina::config::Secret;
use voxmachina::hubspot::{HubSpot, HubSpotError, RetryPolicy};

fn fast_retry(max_attempts: usize) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(3),
    }
}

fn client(fake: &FakeHubSpot) -> HubSpot {
    HubSpot::new(&fake.base_url, Secret::new(TOKEN), Duration::from_secs(5))
        .unwrap()
        .with_retry(fast_retry(4))
}

#[tokio::test]
async fn find_existing_contact_sends_the_documented_search() {
    let fake = FakeHubSpot::start().await;
    fake.insert_contact(json!({"phone": "+15550000000", "firstname": "Other"}));
    let id = fake.insert_contact(json!({"mobilephone": "+15551234567", "firstname": "Jane"}));
    let found = client(&fake)
        .find_or_create_contact("+15551234567")
        .await
        .unwrap();
    assert_eq!(found, id);

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1, "no contact created");
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/crm/v3/objects/contacts/search")
    );
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(
        r.json,
        json!({
            "filterGroups": [
                { "filters": [ { "propertyName": "phone",       "operator": "EQ", "value": "+15551234567" } ] },
                { "filters": [ { "propertyName": "mobilephone", "operator": "EQ", "value": "+15551234567" } ] }
            ],
            "properties": [ "firstname", "lastname", "email", "phone", "mobilephone" ],
            "limit": 1
        })
    );
}

#[tokio::test]
async fn search_returns_the_requested_properties() {
    let fake = FakeHubSpot::start().await;
    let id = fake.insert_contact(
        json!({"phone": "+15551234567", "firstname": "Jane", "email": "j@x.example"}),
    );
    let contact = client(&fake)
        .search_contact_by_phone("+15551234567")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contact.id, id);
    assert_eq!(contact.properties["firstname"], "Jane");
    assert_eq!(contact.properties["lastname"], Value::Null);
    assert!(
        client(&fake)
            .search_contact_by_phone("+15559999999")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn unknown_phone_creates_a_contact() {
    let fake = FakeHubSpot::start().await;
    let id = client(&fake)
        .find_or_create_contact("+15551234567")
        .await
        .unwrap();
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].path, "/crm/v3/objects/contacts");
    assert_eq!(
        reqs[1].json,
        json!({ "properties": { "phone": "+15551234567" } })
    );
    assert_eq!(fake.contacts()[&id]["phone"], "+15551234567");
    // Found by the next lookup.
    assert_eq!(
        client(&fake)
            .find_or_create_contact("+15551234567")
            .await
            .unwrap(),
        id
    );
    assert_eq!(fake.contacts().len(), 1);
}

#[tokio::test]
async fn duplicate_email_conflict_yields_the_existing_id() {
    let fake = FakeHubSpot::start().await;
    let id = fake.insert_contact(json!({"email": "jane@example.com"}));
    let mut props = serde_json::Map::new();
    props.insert("email".into(), json!("Jane@Example.com"));
    props.insert("phone".into(), json!("+15551234567"));
    let got = client(&fake).create_contact(props).await.unwrap();
    assert_eq!(got, id);
    assert_eq!(fake.contacts().len(), 1);
}

#[tokio::test]
async fn ticket_is_created_with_the_contact_association() {
    let fake = FakeHubSpot::start().await;
    let contact = fake.insert_contact(json!({"phone": "+15551234567"}));
    let ticket = client(&fake)
        .create_ticket(
            "Call from +15551234567",
            "AI summary: wants a refund",
            &contact,
            None,
            None,
        )
        .await
        .unwrap();
    let r = fake.requests().pop().unwrap();
    assert_eq!(r.path, "/crm/v3/objects/tickets");
    assert_eq!(
        r.json,
        json!({
            "properties": {
                "subject": "Call from +15551234567",
                "content": "AI summary: wants a refund",
                "hs_pipeline": "0",
                "hs_pipeline_stage": "1"
            },
            "associations": [
                { "to": { "id": contact }, "types": [ { "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 16 } ] }
            ]
        })
    );
    let stored = fake.tickets();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, ticket);
    assert_eq!(
        stored[0].associations,
        [(contact, "HUBSPOT_DEFINED".to_string(), 16)]
    );
}

#[tokio::test]
async fn ticket_pipeline_and_stage_and_errors() {
    let fake = FakeHubSpot::start().await;
    let hs = client(&fake);
    let contact = fake.insert_contact(json!({"phone": "+15551234567"}));
    hs.create_ticket("s", "c", &contact, Some("0"), Some("3"))
        .await
        .unwrap();
    assert_eq!(fake.tickets()[0].properties["hs_pipeline_stage"], "3");
    // A pipeline without a stage is refused locally.
    assert!(matches!(
        hs.create_ticket("s", "c", &contact, Some("7"), None).await,
        Err(HubSpotError::Invalid(_))
    ));
    assert_eq!(fake.requests().len(), 1);
    // HubSpot's validation errors map to Api with the category.
    let err = hs
        .create_ticket("s", "c", &contact, Some("0"), Some("99"))
        .await
        .unwrap_err();
    let HubSpotError::Api {
        status,
        category,
        correlation_id,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (*status, category.as_deref()),
        (400, Some("VALIDATION_ERROR"))
    );
    assert!(correlation_id.is_some());
    let err = hs
        .create_ticket("s", "c", "424242", None, None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err:?}");
}

#[tokio::test]
async fn wrong_token_is_401() {
    let fake = FakeHubSpot::start().await;
    let hs = HubSpot::new(
        &fake.base_url,
        Secret::new("pat-wrong"),
        Duration::from_secs(5),
    )
    .unwrap();
    let err = hs.find_or_create_contact("+15551234567").await.unwrap_err();
    let HubSpotError::Api {
        status, category, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (*status, category.as_deref()),
        (401, Some("INVALID_AUTHENTICATION"))
    );
    assert_eq!(fake.requests().len(), 1, "401 is not retried");
}

#[tokio::test]
async fn rate_limited_then_success_honours_retry_after() {
    let fake = FakeHubSpot::start().await;
    fake.rate_limit_next(2, Some("1"), "TEN_SECONDLY_ROLLING");
    let started = Instant::now();
    let id = client(&fake)
        .find_or_create_contact("+15551234567")
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2),
        "waited {elapsed:?}, Retry-After: 1 twice"
    );
    assert!(elapsed < Duration::from_secs(5), "waited {elapsed:?}");
    let paths: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/crm/v3/objects/contacts/search",
            "/crm/v3/objects/contacts/search",
            "/crm/v3/objects/contacts/search",
            "/crm/v3/objects/contacts"
        ]
    );
    assert_eq!(fake.contacts().len(), 1);
    assert!(fake.contacts().contains_key(&id));
}

#[tokio::test]
async fn rate_limited_without_retry_after_uses_backoff() {
    let fake = FakeHubSpot::start().await;
    fake.rate_limit_next(1, None, "SECONDLY");
    let contact = fake.insert_contact(json!({"phone": "+15551234567"}));
    let started = Instant::now();
    client(&fake)
        .create_ticket("s", "c", &contact, None, None)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(fake.requests().len(), 2);
    assert_eq!(
        fake.tickets().len(),
        1,
        "the 429'd create was not applied, the retry was"
    );
}

#[tokio::test]
async fn gives_up_after_the_bounded_attempts() {
    let fake = FakeHubSpot::start().await;
    fake.rate_limit_next(10, Some("0"), "TEN_SECONDLY_ROLLING");
    let hs = client(&fake).with_retry(fast_retry(3));
    let err = hs.find_or_create_contact("+15551234567").await.unwrap_err();
    let HubSpotError::RateLimited {
        policy,
        attempts,
        retry_after,
        message,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*attempts, 3);
    assert_eq!(policy.as_deref(), Some("TEN_SECONDLY_ROLLING"));
    assert_eq!(*retry_after, Some(Duration::ZERO));
    assert!(!message.is_empty());
    assert_eq!(fake.requests().len(), 3);
    assert_eq!(err.status(), Some(429));
}

#[tokio::test]
async fn daily_limit_is_not_retried() {
    let fake = FakeHubSpot::start().await;
    fake.rate_limit_next(1, Some("0"), "DAILY");
    let err = client(&fake)
        .find_or_create_contact("+15551234567")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HubSpotError::RateLimited { policy: Some(p), attempts: 1, .. } if p == "DAILY"),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn retry_after_is_capped_by_the_policy() {
    let fake = FakeHubSpot::start().await;
    fake.rate_limit_next(1, Some("30"), "TEN_SECONDLY_ROLLING");
    let hs = client(&fake).with_retry(RetryPolicy {
        max_attempts: 2,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(200),
    });
    let started = Instant::now();
    hs.find_or_create_contact("+15551234567").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn empty_phone_and_transport_errors() {
    let fake = FakeHubSpot::start().await;
    assert!(matches!(
        client(&fake).find_or_create_contact(" ").await,
        Err(HubSpotError::Invalid(_))
    ));
    assert!(fake.requests().is_empty());
    let hs = HubSpot::new(
        "http://127.0.0.1:9",
        Secret::new(TOKEN),
        Duration::from_secs(2),
    )
    .unwrap();
    let err = hs.find_or_create_contact("+15551234567").await.unwrap_err();
    assert!(
        matches!(err, HubSpotError::Transport(_) | HubSpotError::Timeout),
        "{err:?}"
    );
    assert!(HubSpot::new("api.hubapi.com", Secret::new(TOKEN), Duration::from_secs(1)).is_err());
}

#[test]
fn debug_output_does_not_leak_the_token() {
    let hs = HubSpot::new(
        "https://api.hubapi.com",
        Secret::new(TOKEN),
        Duration::from_secs(1),
    )
    .unwrap();
    let debug = format!("{hs:?}");
    assert!(!debug.contains(TOKEN), "{debug}");
}
