//! `connect-lambda`: the AWS Lambda function an Amazon Connect contact flow invokes to redeem a
//! voxmachina handover (Amazon Connect "Invoke AWS Lambda function":
//! <https://docs.aws.amazon.com/connect/latest/adminguide/connect-lambda-functions.html>).
//!
//! Thin wrapper around [`voxmachina::escalation::connect::handle_json`]: the logic, limits and
//! response keys are documented there and in README.md ("Amazon Connect hand-over").
//!
//! Configuration (Lambda environment):
//! - `VOXMACHINA_STORE__BACKEND=dynamodb`, `VOXMACHINA_STORE__DYNAMODB__TABLE_PREFIX` (the
//!   controller's prefix), optional `VOXMACHINA_STORE__DYNAMODB__REGION` /
//!   `__ENDPOINT_URL`; credentials from the Lambda execution role;
//! - optional `VOXMACHINA_CONFIG` (a config file in the deployment package),
//!   `VOXMACHINA_CONNECT_BUDGET_MS` (default 6000), `VOXMACHINA_CONNECT_SUMMARY_MAX_BYTES`
//!   (default 2000), `RUST_LOG`.
//!
//! Build: `cargo build --release --features connect-lambda --bin connect-lambda`.

use std::path::PathBuf;

use lambda_runtime::{LambdaEvent, service_fn};
use voxmachina::config::{Config, LogFormat, LoggingConfig};
use voxmachina::escalation::connect::{self, LambdaOptions};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    voxmachina::telemetry::init_logging(&LoggingConfig {
        format: LogFormat::Json,
        level: "info".into(),
        ..LoggingConfig::default()
    });
    let config_path = std::env::var_os("VOXMACHINA_CONFIG").map(PathBuf::from);
    let config = Config::load(config_path.as_deref())?;
    let opts = LambdaOptions::from_env(std::env::vars())?;
    let store = connect::open_store(&config).await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let store = store.clone();
        async move {
            let answer =
                connect::handle_json(store.as_ref(), &event.payload, chrono::Utc::now(), &opts)
                    .await;
            Ok::<_, lambda_runtime::Error>(answer)
        }
    }))
    .await
}
