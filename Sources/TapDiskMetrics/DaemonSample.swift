import TapDisk

/// What one daemon answered in one scrape, or why it did not.
package struct DaemonSample: Sendable {
    /// The `disk` label: the control socket's file name without `.sock`.
    package var disk: String
    package var socketPath: String
    /// The replies to `info`, `status` and `stats`, or nil when the daemon is down, wedged or
    /// answered something unusable (`failure` says which).
    package var replies: Replies?
    package var failure: String?
    /// How long the query took (for a timed-out one: the deadline).
    package var seconds: Double

    package struct Replies: Sendable {
        package var info: JSONObject
        package var status: JSONObject
        package var stats: JSONObject

        package init(info: JSONObject, status: JSONObject, stats: JSONObject) {
            self.info = info
            self.status = status
            self.stats = stats
        }
    }

    package init(disk: String, socketPath: String, replies: Replies?, failure: String? = nil, seconds: Double) {
        self.disk = disk
        self.socketPath = socketPath
        self.replies = replies
        self.failure = failure
        self.seconds = seconds
    }
}
