//! The per-node gateway binary. Wiring lands with the bank/gateway issue.
fn main() {
    println!("gateway: not wired yet (see ROADMAP.md)");
}
