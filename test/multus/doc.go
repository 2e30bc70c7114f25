// Package multus checks what multus makes of the plugin's ADD result: the
// network-status entries that the network-attachment-definition-client
// library builds from it (CreateNetworkStatuses in multus v4,
// CreateNetworkStatus in v3.x) must let a job find net1, the PF, and its PCI
// address. It is a module of its own so that the library's client-go never
// enters the plugin's build.
package multus
