import Foundation

/// An error a person can act on. `kind` decides the exit status.
public struct CrsnapError: Error, CustomStringConvertible {
    public enum Kind: Sendable {
        /// Bad input: a name, id, flag or path that cannot be used. Nothing changed.
        case usage
        /// The container or snapshot named does not exist.
        case notFound
        /// The request conflicts with the current state (already running, busy...).
        case conflict
        /// The operation was attempted and failed; what was undone is said.
        case failed
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }

    /// Exit statuses, as documented in README.md and `crsnap --help`.
    public var exitCode: Int32 {
        switch kind {
        case .failed: return 1
        case .usage: return 64
        case .notFound: return 3
        case .conflict: return 4
        }
    }
}
