fn main() -> std::process::ExitCode {
    firebreak::main()
}
