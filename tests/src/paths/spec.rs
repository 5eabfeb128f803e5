//! How a suite states its specification over every path: each case is an async fn
//! taking a [`super::Paths`]; [`crate::every_route!`] instantiates it once per route;
//! [`Failures`] collects every failing cell of a case so one run shows the whole matrix.

use serde_json::Value;

use super::{Answer, Cell};

/// The failing cells of one case.
#[derive(Default)]
pub struct Failures(Vec<String>);

impl Failures {
    /// Records `what` for `cell` unless `ok`.
    pub fn check(&mut self, cell: Cell, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(format!("{cell} {}", what()));
        }
    }

    /// The app's answer as JSON, or a failure.
    pub fn json(&mut self, cell: Cell, what: &str, got: Result<Value, String>) -> Option<Value> {
        match got {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(format!("{cell} {what}: {e}"));
                None
            }
        }
    }

    /// Fails the case, listing every failing cell, if there is one.
    pub fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} failure(s):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// A header of the demo app's echo (`headers` of its JSON), first value.
pub fn seen<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["headers"][name][0].as_str()
}

/// A refusal made by the mesh, as a client must see it: which status and which
/// `weft-error-code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
}

impl Refusal {
    /// Whether curl got exactly this refusal (a complete answer).
    pub fn matches(self, a: &Answer) -> bool {
        a.exit == 0 && a.status == self.status && a.header("weft-error-code") == Some(self.code)
    }
}

/// Instantiates each case (an `async fn(&Paths)` in scope) once per route, as
/// `direct::<case>` and `via_gateway::<case>`, each with its own mesh.
#[macro_export]
macro_rules! every_route {
    ($($case:ident),* $(,)?) => {
        mod direct {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let route = weft_tests::paths::Route::Direct;
                    super::$case(&weft_tests::paths::Paths::start(route).await).await;
                }
            )*
        }
        mod via_gateway {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let route = weft_tests::paths::Route::Gateway;
                    super::$case(&weft_tests::paths::Paths::start(route).await).await;
                }
            )*
        }
    };
}
