/// A JSON object as an ordered list of members.
///
/// Order is kept because replies are built field by field in the order the protocol tables list
/// them, and operators read them that way. Keys compare by their exact UTF-8 bytes, not by
/// Swift's canonical equivalence: `"é"` and `"e\u{301}"` are different keys on the wire, and
/// treating them as one would call a valid request a duplicate (or hide a real duplicate).
///
/// Objects built through this API have unique keys; equality is member by member, in order,
/// since that order is what gets serialized.
package struct JSONObject: Equatable, Sendable, Sequence, ExpressibleByDictionaryLiteral,
    CustomStringConvertible
{
    package struct Member: Equatable, Sendable {
        package var key: String
        package var value: JSONValue

        package init(key: String, value: JSONValue) {
            self.key = key
            self.value = value
        }

        package static func == (lhs: Member, rhs: Member) -> Bool {
            JSONObject.keysEqual(lhs.key, rhs.key) && lhs.value == rhs.value
        }
    }

    package private(set) var members: [Member]

    package init() {
        members = []
    }

    /// Later pairs replace earlier ones with the same key, keeping the first one's position.
    package init<S: Sequence>(_ pairs: S) where S.Element == (String, JSONValue) {
        members = []
        for (key, value) in pairs { set(key, value) }
    }

    /// A duplicate key in a literal is a programming error, as it is for `Dictionary` literals.
    package init(dictionaryLiteral elements: (String, JSONValue)...) {
        members = []
        members.reserveCapacity(elements.count)
        for (key, value) in elements {
            precondition(index(forKey: key) == nil, "duplicate key in JSONObject literal")
            members.append(Member(key: key, value: value))
        }
    }

    package var count: Int { members.count }
    package var isEmpty: Bool { members.isEmpty }
    package var keys: [String] { members.map(\.key) }

    package func makeIterator() -> IndexingIterator<[Member]> {
        members.makeIterator()
    }

    package subscript(key: String) -> JSONValue? {
        guard let index = index(forKey: key) else { return nil }
        return members[index].value
    }

    package func contains(key: String) -> Bool {
        index(forKey: key) != nil
    }

    /// Linear: request and reply objects have a handful of keys, where a scan beats hashing.
    package func index(forKey key: String) -> Int? {
        members.firstIndex { JSONObject.keysEqual($0.key, key) }
    }

    /// Replaces the value in place (keeping the key's position) or appends a new member.
    package mutating func set(_ key: String, _ value: JSONValue) {
        if let index = index(forKey: key) {
            members[index].value = value
        } else {
            members.append(Member(key: key, value: value))
        }
    }

    /// Chaining form of `set`, for building replies in one expression.
    package func setting(_ key: String, _ value: JSONValue) -> JSONObject {
        var copy = self
        copy.set(key, value)
        return copy
    }

    @discardableResult
    package mutating func removeValue(forKey key: String) -> JSONValue? {
        guard let index = index(forKey: key) else { return nil }
        return members.remove(at: index).value
    }

    /// `other`'s values win; keys new to `self` are appended in `other`'s order.
    package mutating func merge(_ other: JSONObject) {
        for member in other.members { set(member.key, member.value) }
    }

    package func merging(_ other: JSONObject) -> JSONObject {
        var copy = self
        copy.merge(other)
        return copy
    }

    package var description: String {
        JSONWriter.string(.object(self))
    }

    /// For the parser, which has already checked (or deliberately kept) duplicates.
    mutating func appendUnchecked(_ key: String, _ value: JSONValue) {
        members.append(Member(key: key, value: value))
    }

    /// How many members carry `key`: more than one only in objects parsed with duplicates kept.
    func occurrences(ofKey key: String) -> Int {
        members.reduce(0) { $0 + (JSONObject.keysEqual($1.key, key) ? 1 : 0) }
    }

    static func keysEqual(_ lhs: String, _ rhs: String) -> Bool {
        lhs.utf8.elementsEqual(rhs.utf8)
    }
}
