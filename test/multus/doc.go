// Package multus checks what multus makes of the plugin's ADD result: the
// network-status entries that the network-attachment-definition-client
// library builds from it (CreateNetworkStatuses in multus v4,
// CreateNetworkStatus in v3.x) must let a job find net1, the PF, and its PCI
// address, for every CNI version a NAD may ask for. Multus v4.2.2 vendors
// the library at v1.7.6, whose pkg/utils/net-attach-def.go is the same as
// that of the v1.7.7 this module uses; v3.x vendors a 2020 snapshot whose
// rule the tests reproduce as well (v3Interface). It is a module of its own
// so that the library's client-go never enters the plugin's build.
package multus
