/// Everything a frontend hands over at attach: the shared memory, mapped, and its two eventfds.
///
/// One owner, moved into the engine and dropped only once no iocb points into the mapping.
package struct RingAttachment: ~Copyable {
    package let mapping: SharedMapping
    package let kick: FileDescriptor
    package let notify: FileDescriptor
    package let pageOrder: Int
    package let dataPages: Int

    package init(
        mapping: consuming SharedMapping, kick: consuming FileDescriptor, notify: consuming FileDescriptor,
        pageOrder: Int, dataPages: Int
    ) {
        self.mapping = mapping
        self.kick = kick
        self.notify = notify
        self.pageOrder = pageOrder
        self.dataPages = dataPages
    }

    package var entries: UInt32 { RingLayout.entries(pageOrder: pageOrder) }
}
