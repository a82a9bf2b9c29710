import Foundation

/// Undo steps for a multi-step change: each step that succeeds pushes its
/// undo; `commit()` disarms them; otherwise `unwind()` runs them newest first.
/// Undo failures are collected, never hidden, and never mask the first error.
public final class Revert {
    private var steps: [(String, () throws -> Void)] = []
    public private(set) var failures: [String] = []

    public init() {}

    public func push(_ what: String, _ undo: @escaping () throws -> Void) {
        steps.append((what, undo))
    }

    public func commit() {
        steps.removeAll()
    }

    /// Runs the undo steps; returns what could not be undone.
    @discardableResult
    public func unwind() -> [String] {
        while let (what, undo) = steps.popLast() {
            do {
                try undo()
            } catch {
                failures.append("\(what): \(error)")
            }
        }
        return failures
    }

    /// Runs `body`; on a throw, unwinds and rethrows the original error with
    /// anything left behind appended.
    public func run<T>(_ body: () throws -> T) throws -> T {
        do {
            let r = try body()
            commit()
            return r
        } catch {
            let left = unwind()
            if left.isEmpty { throw error }
            let message = "\(error)\nundo left state behind:\n  " + left.joined(separator: "\n  ")
            throw CrsnapError(.failed, message)
        }
    }
}
