//! The HTTP ceiling of the machine: a bare axum server answering one fixed
//! JSON document, measured in the same run as syncstore so that the figures
//! in `bench/README.md` can be read as a fraction of what axum alone reaches.
use axum::{routing::get, Router};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3999);
    let app = Router::new().route(
        "/hello",
        get(|| async {
            (
                [("content-type", "application/json")],
                r#"{"hello":"world"}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await
}
