//! The reviews of the byte-counting IO (`src/meter.rs`) and of the TLS stack over it, in
//! one test target: `review_session6`, `tls_partial`, `review_meter2`, `review_meter3`,
//! over the rig they share (`rig`).

#[allow(dead_code)]
#[path = "../../examples/common/tls.rs"]
mod ca;

#[path = "../support/mod.rs"]
mod support;

mod rig;

mod review_meter2;
mod review_meter3;
mod review_session6;
mod tls_partial;
