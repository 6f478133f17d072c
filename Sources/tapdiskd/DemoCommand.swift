import ArgumentParser

/// The seed-bug demonstration (issue 4).
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "demo", abstract: "Show the 2006 ENOSPC bug made impossible.")

    func run() throws {
        throw ReportedFailure(message: "the demo is not built yet")
    }
}
