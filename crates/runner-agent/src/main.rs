//! The guest daemon. Not built yet: a later issue fills it in (host notify, /status, /exec).

fn main() {
    eprintln!("shoes-vz-runner-agent is not implemented yet; see the project's open issues");
    std::process::exit(2);
}
