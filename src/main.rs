//! The `glmgate` binary: everything lives in the library; this only hands over to the CLI.

/// mimalloc: allocation and freeing take about half the instructions of glibc's malloc on the
/// request path, and memory returns to the system under churn (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    glmgate::cli::main()
}
