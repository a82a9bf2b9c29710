import Foundation

/// Names of containers and tags, and snapshot ids (`NAME@N`).
public enum Names {
    public static let maxLength = 64

    /// Letters, digits, '-', '_', '.'; no leading dot; 1 to 64 characters.
    public static func validate(_ name: String, what: String = "container name") throws {
        guard !name.isEmpty else {
            throw CrsnapError(.usage, "invalid \(what) \"\": it is empty")
        }
        guard name.utf8.count <= maxLength else {
            throw CrsnapError(.usage, "invalid \(what) \"\(name.prefix(20))...\": longer than \(maxLength) characters")
        }
        guard !name.hasPrefix(".") else {
            throw CrsnapError(.usage, "invalid \(what) \"\(name)\": it must not start with a dot")
        }
        for c in name.unicodeScalars {
            let ok = (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || c == "-" || c == "_" || c == "."
            if !ok {
                let shown = c.properties.isWhitespace || c.value < 0x20 ? "U+\(String(c.value, radix: 16, uppercase: true))" : String(c)
                throw CrsnapError(.usage, "invalid \(what) \"\(name)\": character '\(shown)' is not allowed (use letters, digits, '-', '_', '.')")
            }
        }
    }
}

/// A snapshot id: the container's name and a number that grows and is never reused.
public struct SnapshotID: Equatable, Hashable, CustomStringConvertible, Sendable {
    public let container: String
    public let number: Int

    public init(container: String, number: Int) {
        self.container = container
        self.number = number
    }

    public init(parsing text: String) throws {
        guard let at = text.lastIndex(of: "@") else {
            throw CrsnapError(.usage, "invalid snapshot id \"\(text)\": expected NAME@N, e.g. web@1")
        }
        let name = String(text[..<at])
        let num = String(text[text.index(after: at)...])
        try Names.validate(name)
        guard let n = Int(num), n > 0, String(n) == num else {
            throw CrsnapError(.usage, "invalid snapshot id \"\(text)\": \"\(num)\" is not a snapshot number (1, 2, ...)")
        }
        self.init(container: name, number: n)
    }

    public var description: String { "\(container)@\(number)" }
}
