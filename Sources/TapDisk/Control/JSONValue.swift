/// One JSON value, as the control protocol exchanges it.
///
/// Numbers keep their token text (see `JSONNumber`), objects keep member order (see
/// `JSONObject`), and strings compare by exact UTF-8 bytes, so a value that was parsed and
/// written back is the same value on the wire, which is what tag echo needs.
///
/// Deliberately not `ExpressibleByNilLiteral`: `nil` must keep meaning "absent" (a request
/// without a tag, a field left out), and JSON `null` is always spelled `.null`.
package enum JSONValue: Equatable, Sendable, CustomStringConvertible {
    case null
    case bool(Bool)
    case number(JSONNumber)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    package static func int(_ value: Int64) -> JSONValue {
        .number(JSONNumber(value))
    }

    package static func uint(_ value: UInt64) -> JSONValue {
        .number(JSONNumber(value))
    }

    /// Any integer type, written exactly (saves `Int64(...)` conversions at call sites).
    package static func integer<T: BinaryInteger>(_ value: T) -> JSONValue {
        .number(JSONNumber(integer: value))
    }

    /// Non-finite values become `null`, as JSON cannot carry them: a daemon reply must not trap
    /// over a statistic that came out as NaN.
    package static func double(_ value: Double) -> JSONValue {
        guard let number = JSONNumber(value) else { return .null }
        return .number(number)
    }

    package var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// Tags must be scalars: anything but an array or an object.
    package var isScalar: Bool {
        switch self {
        case .array, .object: false
        case .null, .bool, .number, .string: true
        }
    }

    package var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    package var numberValue: JSONNumber? {
        if case .number(let value) = self { return value }
        return nil
    }

    package var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    package var arrayValue: [JSONValue]? {
        if case .array(let value) = self { return value }
        return nil
    }

    package var objectValue: JSONObject? {
        if case .object(let value) = self { return value }
        return nil
    }

    /// Exact, integer tokens only (see `JSONNumber.int64`).
    package var int64Value: Int64? { numberValue?.int64 }

    /// Exact, integer tokens only (see `JSONNumber.uint64`).
    package var uint64Value: UInt64? { numberValue?.uint64 }

    package var doubleValue: Double? { numberValue?.double }

    /// Member lookup on objects; nil for other values and for absent keys.
    package subscript(key: String) -> JSONValue? {
        objectValue?[key]
    }

    package var description: String {
        JSONWriter.string(self)
    }

    package static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): true
        case (.bool(let a), .bool(let b)): a == b
        case (.number(let a), .number(let b)): a == b
        case (.string(let a), .string(let b)): a.utf8.elementsEqual(b.utf8)
        case (.array(let a), .array(let b)): a == b
        case (.object(let a), .object(let b)): a == b
        default: false
        }
    }
}

extension JSONValue: ExpressibleByBooleanLiteral {
    package init(booleanLiteral value: Bool) {
        self = .bool(value)
    }
}

extension JSONValue: ExpressibleByIntegerLiteral {
    package init(integerLiteral value: Int64) {
        self = .int(value)
    }
}

extension JSONValue: ExpressibleByFloatLiteral {
    package init(floatLiteral value: Double) {
        self = .double(value)
    }
}

extension JSONValue: ExpressibleByStringLiteral {
    package init(stringLiteral value: String) {
        self = .string(value)
    }
}

extension JSONValue: ExpressibleByArrayLiteral {
    package init(arrayLiteral elements: JSONValue...) {
        self = .array(elements)
    }
}

extension JSONValue: ExpressibleByDictionaryLiteral {
    package init(dictionaryLiteral elements: (String, JSONValue)...) {
        var object = JSONObject()
        for (key, value) in elements {
            precondition(!object.contains(key: key), "duplicate key in JSONValue literal")
            object.appendUnchecked(key, value)
        }
        self = .object(object)
    }
}
