//! The `taskbroker` binary.
fn main() {
    println!("taskbroker {}", env!("CARGO_PKG_VERSION"));
}
